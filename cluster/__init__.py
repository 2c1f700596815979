"""Ray wiring: connecting, Ray Train, the bounded fan-out pool and its workers, Tune, sharded evaluation.
No math here, and nothing from jobs/."""
