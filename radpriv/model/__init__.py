"""Model: encoder resolution, the report classifier (LoRA or full fine-tuning), the
LightningModule, metrics and decision thresholds."""
