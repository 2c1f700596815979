"""The fan-out, pure (no Ray): `job` (what a job is and what a kind declares), `kinds` (the registry and one
module per kind), `selection` (which images and coordinates), `plan` (every job of a config, packed into batches)."""
