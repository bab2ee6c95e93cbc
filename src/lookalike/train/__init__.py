"""Training: config and recipes, batched augmentation, schedules, the engine, checkpoints and plots."""
