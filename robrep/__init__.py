"""robrep: the math of robust representations in pure PyTorch (models, PGD, objectives, training steps,
checkpoints, the store's schema). Never imports ray or ffcv."""
