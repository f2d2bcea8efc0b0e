"""Training: builders, loop, metrics, logging, checkpoints."""
