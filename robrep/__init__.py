"""robrep: everything Ray-free, by role (docs/engine.md): `core` (plumbing), the math at the top level (models,
pgd, objectives, fast, train, augment, experiments, checkpoint, images), `store` (the Parquet store), `fanout`
(jobs, kinds, planning) and `report`. Never imports ray or ffcv."""
