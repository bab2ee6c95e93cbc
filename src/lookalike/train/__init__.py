"""Training: recipes, batched augmentation, schedules, the Muon optimizer, the engine, checkpoints, plots."""
