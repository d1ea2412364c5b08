"""Empirical privacy audit: canaries, the one-run ε lower bound, membership inference."""
