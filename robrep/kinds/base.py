"""What every job kind shares: the config block (BlockSpec), the Job that crosses Ray, what a worker hands
a kind's `run` (BatchContext), and the JobKind record each kind module registers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from robrep.errors import ConfigError
from robrep.experiments import GetImages, split_representations
from robrep.selection import IndexSpec

MAX_STEPS = 1_000_000  # paper: 10,000; more is a typo, and would run for days


@dataclass(frozen=True)
class BlockSpec:
    """One block of `fanout.jobs`: a kind, and the models and images it runs on (default: the fan-out's)."""

    kind: str = ""
    models: tuple[str, ...] = ()  # restrict this block to some of fanout.models (e.g. pairs: standard ones)
    indices: IndexSpec | None = None  # this block's images, instead of fanout.indices
    store_representation: bool = False  # also store R(x') as a list<float32> column

    @classmethod
    def from_config(cls, data: Any, where: str) -> BlockSpec:
        """The block's kind picks its spec from the registry; the rest of the keys are that spec's."""
        from robrep.config import from_dict
        from robrep.kinds import get_kind, list_kinds

        if not isinstance(data, dict) or "kind" not in data:
            raise ConfigError(f"{where.rstrip('.')}: each job block needs a kind, one of {list_kinds()}")
        return from_dict(get_kind(data["kind"]).spec, data, where)

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class PGDBlockSpec(BlockSpec):
    """A block whose jobs run one batched PGD loop (DESIGN §4 defaults: paper A.6)."""

    constraint: Literal["l2", "linf", "unconstrained"] = "l2"
    eps: float = 1000.0  # [0,1]-pixel units; paper A.6: 1000, i.e. unconstrained
    step_size: float = 1.0  # paper A.6: 1
    steps: int = 200  # paper: 10,000 for inversion, 200 for visualization

    def validate(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"fanout.jobs {self.kind}: steps={self.steps} must be within [1, {MAX_STEPS}]")
        for key in ("step_size", "eps"):
            value = getattr(self, key)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"fanout.jobs {self.kind}: {key}={value} must be a finite number > 0")


LATER_FIELDS = {"precision": "fp32", "jitter": 0, "max_degrees": 0.0}  # Job fields added after stores existed

# The fields one block shares across its jobs (per model): a figure or a summary number is one such setting.
# A kind's `varies` names those of them its block varies per job (invert_sweep: eps, its radius).
SETTING = ("kind", "model_id", "model_digest", "dataset", "split", "constraint", "eps", "step_size", "steps",
           "precision", "jitter", "max_degrees")


def setting_key(values, varies: tuple[str, ...] = ()) -> str:
    """The setting of a Job or a results row (a mapping or a namedtuple's dict), as a string: floats as float32
    (what the store keeps), per-job fields (`varies`) left out."""
    parts = []
    for name in SETTING:
        value = None if name in varies else values.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = None if name in varies else LATER_FIELDS.get(name)  # rows from before the column
        if isinstance(value, (float, np.floating)):
            value = f"{float(np.float32(value)):.7g}"
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = str(int(value))
        parts.append(value)
    return json.dumps(parts)


@dataclass(frozen=True)
class Job:
    """One fan-out job: what it computes (hashed into job_id) and where its model and images are."""

    kind: str
    model_id: str
    dataset: str
    split: str
    model_digest: str = ""  # the weights (robrep.checkpoint.model_digest): a retrained model gets new job ids
    dataset_fingerprint: str = ""  # the .beton (datasets.beton.fingerprint): so does a rebuilt dataset
    target_index: int = -1  # -1 = none
    source_index: int = -1
    init: str | None = None  # noise, gray, image, interp (PGD kinds)
    rng_seed: int = 0
    constraint: str | None = None
    eps: float | None = None
    step_size: float | None = None
    steps: int = 0
    coordinate: int = -1
    lam: float = math.nan
    images_per_end: int = 0  # top_activating: the k most and k least activating images
    store_representation: bool = False
    precision: str = "fp32"  # of the PGD loop (robrep/fast.py); in the job's identity unless fp32
    jitter: int = 0  # regularized_visualize: random shift, up to this many pixels, per step (Fig. 10)
    max_degrees: float = 0.0  # regularized_visualize: random rotation, up to this many degrees, per step
    # Where things are and how fast they run: not part of the job's identity.
    checkpoint: str = field(default="", compare=False)
    dataset_path: str = field(default="", compare=False)  # the .beton on the worker's node
    dataset_source: str | None = field(default=None, compare=False)  # where a node stages it from (data.stage_from)
    image_shape: tuple[int, ...] = field(default=(), compare=False)
    model_robust: bool = field(default=False, compare=False)
    model_eps: float = field(default=0.0, compare=False)
    compile: bool = field(default=False, compare=False)  # torch.compile the PGD loop's model
    # The judge: a classifier that did not produce the images labels each one (judge_pred). A measurement of the
    # result, not part of it: not in the job's identity (a rerun with another judge skips committed jobs).
    judge_model_id: str = field(default="", compare=False)
    judge_checkpoint: str = field(default="", compare=False)
    job_id: str = field(default="", compare=False)

    def identity(self) -> dict:
        """The fields that change a result. Fields added later are left out at their default (precision "fp32",
        no jitter or rotation), so the ids of the jobs run before they existed stay the same and a store keeps
        resuming them."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        for name, default in LATER_FIELDS.items():
            if fields[name] == default:
                del fields[name]
        return fields

    def with_id(self) -> Job:
        canonical = json.dumps(self.identity(), sort_keys=True)
        return dataclasses.replace(self, job_id=hashlib.sha256(canonical.encode()).hexdigest()[:24])

    def setting(self, varies: tuple[str, ...] = ()) -> str:
        """The block setting this job belongs to (setting_key; `varies`: its kind's)."""
        return setting_key({name: getattr(self, name) for name in SETTING}, varies)

    def columns(self) -> dict:
        """The job's own columns of a result row."""
        names = ("kind", "model_id", "dataset", "split", "target_index", "source_index", "init", "rng_seed",
                 "constraint", "eps", "step_size", "steps", "coordinate", "lam", "job_id", "model_robust", "model_eps",
                 "model_digest", "dataset_fingerprint", "precision", "judge_model_id", "jitter", "max_degrees")
        columns = {name: getattr(self, name) for name in names}
        columns["judge_model_id"] = self.judge_model_id or None
        return columns


@dataclass(frozen=True)
class ExpandContext:
    """What `expand` sees for one (block, model): the block's images and the model's representation size."""

    indices: list[int]
    labels: np.ndarray  # labels of the whole split
    representation_dim: int
    rng_seed: int  # fanout.rng_seed


@dataclass
class BatchContext:
    """What a worker hands a kind's `run`: the model in eval mode on `device` (the fp32 reference: targets and
    measurements), `fast`, the same model for the PGD loop (robrep.fast.FastModel in the jobs' precision), images
    by index, and a memo that outlives the batch (the actor's cache) for things computed once per model and split."""

    model: nn.Module
    fast: nn.Module
    device: str
    get_images: GetImages
    split_size: int
    memo: dict
    memo_key: tuple

    def split_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """R(x) of every image of the split, in index order: ((N, D) on cpu, (N,) labels); once per actor."""
        key = ("representations", *self.memo_key)
        if key not in self.memo:
            self.memo[key] = split_representations(self.model, self.get_images, self.split_size, self.device)
        return self.memo[key]


@dataclass(frozen=True)
class JobKind:
    """One kind of fan-out job, registered in robrep/kinds/__init__.py."""

    name: str
    spec: type[BlockSpec]  # its config block, validated at the door
    expand: Callable[[BlockSpec, ExpandContext], list[dict]]  # block -> the varying Job fields of each job
    run: Callable[[BatchContext, list[Job]], list[dict]]  # a batch of compatible jobs -> rows of `table`
    table: str = "results"
    report: Callable | None = None  # (Report, rows, image lookup) -> None: its section of jobs.report
    needs: Callable[[BlockSpec], list[BlockSpec]] | None = None  # blocks of other kinds its jobs rely on
    tunable: bool = False  # jobs.tune's inversion step_size / steps apply (`--from-tune`)
    varies: tuple[str, ...] = ()  # SETTING fields its blocks vary per job (invert_sweep: eps)
    judged: bool = False  # a judge's label of its images means something (they aim at a target's class)
