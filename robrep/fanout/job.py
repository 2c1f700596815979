"""What every job kind shares: the config block (BlockSpec), the Job that crosses Ray, what a worker hands
a kind's `run` (BatchContext), and the JobKind record each kind module registers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from robrep.core.config import Bounds, Positive, distinct
from robrep.experiments import GetImages, split_representations
from robrep.fanout.selection import IndexSpec

MAX_STEPS = 1_000_000  # paper: 10,000; more is a typo, and would run for days


@dataclass(frozen=True)
class BlockSpec:
    """One block of `fanout.jobs`: a kind, and the models and images it runs on (default: the fan-out's)."""

    kind: str = ""
    models: tuple[str, ...] = ()  # restrict this block to some of fanout.models (e.g. pairs: standard ones)
    indices: IndexSpec | None = None  # this block's images, instead of fanout.indices
    store_representation: bool = False  # also store R(x') as a list<float32> column

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class PGDBlockSpec(BlockSpec):
    """A block whose jobs run one batched PGD loop (defaults: paper A.6)."""

    constraint: Literal["l2", "linf", "unconstrained"] = "l2"
    eps: Positive = 1000.0  # [0,1]-pixel units; paper A.6: 1000, i.e. unconstrained
    step_size: Positive = 1.0  # paper A.6: 1
    steps: Annotated[int, Bounds(1, MAX_STEPS)] = 200  # paper: 10,000 for inversion, 200 for visualization

    def validate(self) -> None:
        distinct(getattr(self, "inits", ()), f"fanout.jobs {self.kind}: inits", "start")


@dataclass(frozen=True)
class Param:
    """One parameter of a kind's jobs, declared by the kind (JobKind.params): a Job value (`job.<name>`), a column of
    the rows it writes, and part of the job id. The results schema, Job.columns, the batch key, the block setting and
    the job id are all derived from these declarations."""

    name: str
    type: pa.DataType  # its results column
    default: Any  # where unset; also its value in the rows of kinds that do not have it
    from_block: bool = False  # the block's field of this name sets it (unless `expand` does): part of the setting
    batch: bool = False  # jobs that differ in it cannot share one batched loop
    later: bool = False  # added after stores existed: in the job id only when not `default`, so old ids stay


PGD_PARAMS = (  # every PGDBlockSpec kind's
    Param("constraint", pa.string(), None, from_block=True, batch=True),
    Param("eps", pa.float32(), None, from_block=True),  # per job in a batch (invert_sweep's radii)
    Param("step_size", pa.float32(), None, from_block=True, batch=True),
    Param("steps", pa.int32(), 0, from_block=True, batch=True),
)
COORDINATE = Param("coordinate", pa.int32(), -1)  # of R: visualize, manipulate, regularized_visualize, top_activating

# Frozen history: before kinds declared their parameters, Job was one record of every kind's fields, and every job's
# id and block setting hashed the other kinds' fields at these values. They stay, so the ids and settings of existing
# stores do not change; a new parameter is declared by its kind and never added here.
UNION_DEFAULTS = {"constraint": None, "eps": None, "step_size": None, "steps": 0, "coordinate": -1, "lam": math.nan,
                  "images_per_end": 0, "jitter": 0, "max_degrees": 0.0}
UNION_LATER = ("jitter", "max_degrees")  # of those, the ones left out of the id at their default
# The block setting of a job or a row, in the order existing manifests keep it; a kind's `from_block` parameters
# that are not listed here follow, in its order. A kind's `varies` names those of them its block varies per job.
SETTING = ("kind", "model_id", "model_digest", "dataset", "split", "constraint", "eps", "step_size", "steps",
           "precision", "jitter", "max_degrees")
SETTING_DEFAULTS = {"precision": "fp32", **UNION_DEFAULTS}  # a row from before the column (null) had this value


def setting_key(values, names: tuple[str, ...] = SETTING, varies: tuple[str, ...] = ()) -> str:
    """The block setting of a job or a results row (a mapping) over `names` (JobKind.setting_names), as a string:
    floats as float32 (what the store keeps), per-job fields (`varies`) left out."""
    parts = []
    for name in names:
        value = None if name in varies else values.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = None if name in varies else SETTING_DEFAULTS.get(name)  # rows from before the column
            value = None if isinstance(value, float) and math.isnan(value) else value
        if isinstance(value, (float, np.floating)):
            value = f"{float(np.float32(value)):.7g}"
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = str(int(value))
        parts.append(value)
    return json.dumps(parts)


@dataclass(frozen=True)
class Job:
    """One fan-out job: what every job has (hashed into job_id, with its kind's parameters) and where its model and
    images are. Its kind's own parameters (JobKind.params) are in `params` and read as attributes: `job.eps`."""

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
    store_representation: bool = False
    precision: str = "fp32"  # of the PGD loop (robrep/fast.py); in the job's identity unless fp32
    # Its images are the models' own dataset (False: a kind's other dataset, e.g. invert's targets_from, whose classes
    # the models and the judge do not know). A fact of the block, recorded on each row; not part of the id.
    in_distribution: bool = field(default=True, compare=False)
    params: tuple[tuple[str, Any], ...] = field(default=(), compare=False)  # (name, value) per JobKind.params
    # Where things are and how fast they run: not part of the job's identity.
    checkpoint: str = field(default="", compare=False)
    dataset_path: str = field(default="", compare=False)  # the .beton on the worker's node
    dataset_source: str | None = field(default=None, compare=False)  # where a node stages it from (data.stage_from)
    image_shape: tuple[int, ...] = field(default=(), compare=False)
    model_robust: bool = field(default=False, compare=False)
    model_eps: float = field(default=0.0, compare=False)
    compile: bool = field(default=False, compare=False)  # torch.compile the PGD loop's model
    compile_cache: str = field(default="", compare=False)  # the store whose compile_cache/ it shares (compile only)
    # The judge: a classifier that did not produce the images labels each one (judge_pred). A measurement of the
    # result, not part of it: not in the job's identity (a rerun with another judge skips committed jobs).
    judge_model_id: str = field(default="", compare=False)
    judge_checkpoint: str = field(default="", compare=False)
    job_id: str = field(default="", compare=False)

    def __getattr__(self, name: str):
        if name.startswith("_") or name == "params":  # unpickling looks things up before `params` exists
            raise AttributeError(name)
        for key, value in self.params:
            if key == name:
                return value
        raise AttributeError(f"a {self.kind} job has no parameter {name!r}")

    def get(self, name: str, default=None):
        """A parameter of the job's kind, or `default` where its kind has none (e.g. steps, for every kind)."""
        return dict(self.params).get(name, default)

    def identity(self, params: tuple[Param, ...]) -> dict:
        """The fields that change a result: the common ones, the kind's `params` and, at their frozen values, the
        other kinds' fields of the old union record (UNION_DEFAULTS). A later field at its default (precision fp32,
        no jitter) is left out, so the ids of jobs run before it existed stay the same and a store keeps resuming
        them."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        fields.update({k: v for k, v in UNION_DEFAULTS.items() if k not in UNION_LATER})
        own = dict(self.params)
        for p in params:
            if not (p.later and own[p.name] == p.default):
                fields[p.name] = own[p.name]
        if fields["precision"] == "fp32":
            del fields["precision"]
        return fields

    def with_id(self, params: tuple[Param, ...]) -> Job:
        canonical = json.dumps(self.identity(params), sort_keys=True)
        return dataclasses.replace(self, job_id=hashlib.sha256(canonical.encode()).hexdigest()[:24])

    def columns(self) -> dict:
        """The job's own columns of a result row: what every job has, and its kind's parameters."""
        names = ("kind", "model_id", "dataset", "split", "target_index", "source_index", "init", "rng_seed", "job_id",
                 "model_robust", "model_eps", "model_digest", "dataset_fingerprint", "precision", "in_distribution")
        return {**{name: getattr(self, name) for name in names}, "judge_model_id": self.judge_model_id or None,
                **dict(self.params)}


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
    """One kind of fan-out job, registered in robrep/fanout/kinds/__init__.py (or by robrep.fanout.kinds.register)."""

    name: str
    spec: type[BlockSpec]  # its config block, validated at the door
    expand: Callable[[BlockSpec, ExpandContext], list[dict]]  # block -> the varying fields and params of each job
    run: Callable[[BatchContext, list[Job]], list[dict]]  # a batch of compatible jobs -> rows of `table`
    params: tuple[Param, ...] = ()  # its jobs' own parameters (PGD kinds: PGD_PARAMS first)
    table: str = "results"
    report: Callable | None = None  # (Report, rows, image lookup, rows of `report_with`) -> None: its section
    report_with: tuple[str, ...] = ()  # kinds whose rows its report section also receives (Fig. 10: visualize)
    summary: Callable | None = None  # (models, rows) -> a DataFrame: its part of the summary numbers, or None
    datasets: Callable[[BlockSpec], str | None] | None = None  # block -> another dataset its targets come from
    needs: Callable[[BlockSpec], list[BlockSpec]] | None = None  # blocks of other kinds its jobs rely on
    tunable: bool = False  # jobs.tune's inversion step_size / steps apply (`--from-tune`)
    varies: tuple[str, ...] = ()  # from_block params its blocks vary per job (invert_sweep: eps, its radius)
    judged: bool = False  # a judge's label of its images means something (they aim at a target's class)
    fake_relu: bool = False  # its objective runs R(x) through the fake ReLU (Eq. 5): only models it applies to

    @property
    def setting_names(self) -> tuple[str, ...]:
        """The fields of its block setting (SETTING, then its own from_block params that SETTING lacks)."""
        return SETTING + tuple(p.name for p in self.params if p.from_block and p.name not in SETTING)

    def setting(self, values) -> str:
        """The block setting of a job (its fields and params) or a results row (a mapping)."""
        return setting_key(values, self.setting_names, self.varies)

    def batch_key(self, job: Job) -> tuple:
        """Jobs with equal keys run in one batched loop: same model, data, precision and `batch` params."""
        own = dict(job.params)
        return (job.model_id, job.kind, job.dataset_path, job.precision, job.compile,
                *(own[p.name] for p in self.params if p.batch))

    def make_job(self, common: Job, block: BlockSpec, fields: dict) -> Job:
        """A job of this kind: `common` with one `expand` result's fields; params from `fields`, else the block's
        field of that name (from_block), else the declared default."""
        return self._with(common, fields, lambda p: getattr(block, p.name) if p.from_block else p.default)

    def job(self, **fields) -> Job:
        """A job of this kind from its fields and params by name (unset params at their defaults), with its id."""
        names = {p.name for p in self.params}
        base = Job(kind=self.name, **{k: v for k, v in fields.items() if k not in names})
        return self._with(base, {k: v for k, v in fields.items() if k in names}, lambda p: p.default)

    def _with(self, base: Job, fields: dict, unset: Callable[[Param], Any]) -> Job:
        """`base` with `fields` (Job fields and params by name), each param not in them at unset(param); with its id."""
        names = {p.name for p in self.params}
        own = tuple((p.name, fields[p.name] if p.name in fields else unset(p)) for p in self.params)
        rest = {k: v for k, v in fields.items() if k not in names}
        return dataclasses.replace(base, **rest, params=own).with_id(self.params)

    def job_values(self, job: Job) -> dict:
        """A job's fields and params as one mapping (for `setting`)."""
        return {**{f.name: getattr(job, f.name) for f in dataclasses.fields(job)}, **dict(job.params)}
