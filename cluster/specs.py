"""The Ray side of two config sections: how many workers, their CPUs and GPUs, placement and retries. Each extends
the Ray-free spec of its section, so the keys stay where users write them (`train: [{num_workers: 2, ...}]`,
`fanout: {workers: 4, ...}`) while robrep's specs hold only what the math and the plan need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from robrep.core.config import Bounds, Count, NonNegative, NonNegativeFloat, Positive
from robrep.core.errors import ConfigError
from robrep.fanout.plan import MAX_BATCH, FanoutSpec
from robrep.train import ModelSpec


@dataclass(frozen=True)
class TrainSpec(ModelSpec):
    """One model to train (a `train:` entry), with its Ray Train worker group."""

    num_workers: Count = 2
    use_gpu: bool = False
    cpus_per_worker: Positive = 1.0
    gpus_per_worker: NonNegativeFloat = 1.0  # with use_gpu
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: NonNegative = 0  # worker-group restarts from the last checkpoint before the run fails

    def validate(self) -> None:
        super().validate()
        if self.batch_size < self.num_workers:
            raise ConfigError(f"train {self.model_id}: batch_size {self.batch_size} < num_workers {self.num_workers}")


@dataclass(frozen=True)
class FanoutRunSpec(FanoutSpec):
    """The fan-out (`fanout:`), with its pool of Ray actors."""

    max_in_flight: Annotated[int, Bounds(1, MAX_BATCH)] = 4  # batches submitted and not yet committed
    workers: Annotated[int, Bounds(1, MAX_BATCH)] = 2  # pool actors: one per CPU slot or GPU
    cpus_per_worker: Positive = 1.0
    gpus_per_worker: NonNegativeFloat = 0.0  # fractional GPUs are fine, e.g. 0.25 puts four workers on a GPU
    max_retries: NonNegative = 3  # a batch whose worker dies is retried this often

