"""Training: config, data, checkpoints, the trainer (single process and torchrun DDP)."""
