"""Differential privacy: the DP-SGD callback (Opacus), privacy accounting and noise calibration."""
