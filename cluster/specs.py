"""The Ray side of two config sections: how many workers, their CPUs and GPUs, placement and retries. Each extends
the Ray-free spec of its section, so the keys stay where users write them (`train: [{num_workers: 2, ...}]`,
`fanout: {workers: 4, ...}`) while robrep's specs hold only what the math and the plan need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from robrep.core.errors import ConfigError
from robrep.fanout.plan import MAX_BATCH, FanoutSpec
from robrep.train import ModelSpec


@dataclass(frozen=True)
class TrainSpec(ModelSpec):
    """One model to train (a `train:` entry), with its Ray Train worker group."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # with use_gpu
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = 0  # worker-group restarts from the last checkpoint before the run fails

    def validate(self) -> None:
        super().validate()
        if self.num_workers < 1 or self.max_failures < 0 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ConfigError(f"train {self.model_id}: need num_workers >= 1, max_failures >= 0, cpus_per_worker > 0 "
                              "and gpus_per_worker >= 0")
        if self.batch_size < self.num_workers:
            raise ConfigError(f"train {self.model_id}: batch_size {self.batch_size} < num_workers {self.num_workers}")


@dataclass(frozen=True)
class FanoutRunSpec(FanoutSpec):
    """The fan-out (`fanout:`), with its pool of Ray actors."""

    max_in_flight: int = 4  # batches submitted and not yet committed
    workers: int = 2  # pool actors: one per CPU slot or GPU
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractional GPUs are fine, e.g. 0.25 puts four workers on a GPU
    max_retries: int = 3  # a batch whose worker dies is retried this often

    def validate(self) -> None:
        super().validate()
        for key in ("max_in_flight", "workers"):
            if not 1 <= getattr(self, key) <= MAX_BATCH:
                raise ConfigError(f"fanout.{key}={getattr(self, key)} must be within [1, {MAX_BATCH}]")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or self.max_retries < 0:
            raise ConfigError("fanout: need cpus_per_worker > 0, gpus_per_worker >= 0 and max_retries >= 0")
