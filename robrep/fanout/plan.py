"""Planning a fan-out, pure (no Ray, no files but the store and checkpoint metadata): the fan-out's config,
the models it names, and every job of every block with a deterministic job_id, packed into batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import torch

from robrep.checkpoint import load_checkpoint, model_digest, model_from_meta, read_meta
from robrep.core.config import Bounds, NonNegative, Seed, distinct
from robrep.core.errors import ConfigError
from robrep.core.location import absolute, exists, join, redact
from robrep.core.names import check_name
from robrep.fanout.job import BlockSpec, ExpandContext, Job
from robrep.fanout.kinds.invert import InvertSpec
from robrep.fanout.registry import block_from_config, get_kind
from robrep.fanout.selection import IndexSpec, select_indices
from robrep.models import fake_relu_problem
from robrep.store import find_model

MAX_BATCH = 65_536


@dataclass(frozen=True)
class FanoutSpec:
    """Representation experiments for every model over chosen images of one split (paper Sec. 2 and 4). Its Ray
    pool's settings (workers, ...) are cluster.specs.FanoutRunSpec's."""

    models: tuple[str, ...]  # model_ids in the store's models table, or robrep checkpoint folders
    split: Literal["test", "train"] = "test"
    indices: IndexSpec = field(default_factory=IndexSpec)
    jobs: tuple[BlockSpec, ...] = field(default=(InvertSpec(),), metadata={"factory": block_from_config})
    rng_seed: Seed = 0  # seeds the noise starts and the choice of other-class sources
    batch_size: Annotated[int, Bounds(1, MAX_BATCH)] = 64  # jobs per batched PGD loop
    wait_for_lease: bool = False  # another driver holds the store's writer lease: queue behind it, not fail
    compact_parts: NonNegative = 256  # a partition folder with this many small parts is compacted by the run (0: never)
    precision: Literal["fp32", "bf16"] = "fp32"  # of the PGD loops (robrep/fast.py); rows are measured in fp32
    compile: bool = False  # torch.compile the model of the PGD loops (`compile: on`)
    # A classifier that did not produce the images labels every result image (judge_pred): a model_id or checkpoint
    # folder. Default: with two models (a standard and a robust one), each is judged by the other; "none": no judge.
    judge: str | None = None

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("fanout.models is empty; name at least one model_id")
        distinct(self.models, "fanout.models", "model")
        if self.compact_parts == 1:
            raise ConfigError(f"fanout.compact_parts={self.compact_parts} must be 0 (never compact) or >= 2 (the "
                              "parts a partition folder holds before the fan-out compacts it)")
        if not self.jobs:
            raise ConfigError("fanout.jobs is empty; add at least one block such as {kind: invert}")
        for block in self.jobs:
            distinct(block.models, f"fanout.jobs {block.kind}: models", "model")
            unknown = sorted(set(block.models) - set(self.models))
            if unknown:
                raise ConfigError(f"fanout.jobs {block.kind}: models {unknown} are not in fanout.models")


@dataclass(frozen=True)
class ModelRef:
    """A model the fan-out runs: where its checkpoint is and what its jobs' rows record about it."""

    model_id: str
    checkpoint: str
    robust: bool
    eps: float
    representation_dim: int
    digest: str  # of its weights
    no_fake_relu: str = ""  # why the fake ReLU does not apply to it (a GELU network's R(x)); "": it applies


@dataclass(frozen=True)
class SplitRef:
    """The images the jobs refer to: one split of one dataset, as a .beton the workers read."""

    dataset: str
    split: str
    path: str  # the .beton on each node
    image_shape: tuple[int, int, int]
    num_classes: int
    fingerprint: str  # of the .beton
    source: str | None = None  # where each node stages the .beton from (None: `path` is on every node)


def resolve_model(store: str, name: str, num_classes: int) -> ModelRef:
    """fanout.models entry -> ModelRef, by model_id in the store or by checkpoint folder; errors say what to do."""
    row = find_model(store, name)
    if row is None:
        if not exists(join(absolute(name), "meta.json")):
            raise ConfigError(
                f"fanout.models: {name!r} is not in the store's models table at {redact(store)}/models nor a "
                "checkpoint "
                "folder; train it with python -m jobs.train")
        meta = read_meta(name)
        model_id = check_name(meta.get("model_id") or absolute(name).rsplit("/", 1)[-1],
                              f"the model_id of checkpoint {redact(name)}")
        row = {"model_id": model_id, "checkpoint": absolute(name), "robust": meta.get("robust"),
               "eps": meta.get("eps")}
    # The weights load, and match the digest meta.json names, here: a damaged checkpoint is one error before any job.
    _, meta = load_checkpoint(row["checkpoint"])
    if meta["num_classes"] != num_classes:
        raise ConfigError(f"model {name!r} has {meta['num_classes']} classes but the split has {num_classes}: "
                          "they do not belong together")
    with torch.device("meta"):  # the architecture alone: no weights are read
        model = model_from_meta(meta)
        why = fake_relu_problem(model)
    return ModelRef(row["model_id"], str(row["checkpoint"]), bool(row.get("robust")), float(row.get("eps") or 0.0),
                    model.representation_dim, meta.get("digest") or model_digest(row["checkpoint"]), why or "")


def judges(fan: FanoutSpec, models: dict[str, ModelRef], judge: ModelRef | None) -> dict[str, ModelRef | None]:
    """The judge of each fan-out model: fanout.judge for every model but itself, and otherwise, with exactly two
    models, the other one; None where there is none (fanout.judge "none", or a third model and no judge)."""
    names = list(fan.models)
    chosen = {}
    for name in names:
        if fan.judge == "none":
            chosen[name] = None
        elif judge is not None and judge.model_id != models[name].model_id:
            chosen[name] = judge
        elif len(names) == 2:
            chosen[name] = models[names[1 - names.index(name)]]
        else:
            chosen[name] = None
    return chosen


def other_dataset(block: BlockSpec) -> str | None:
    """The dataset a block takes its images from instead of the fan-out's split (JobKind.datasets), if any."""
    kind = get_kind(block.kind)
    return kind.datasets(block) if kind.datasets else None


def expand_block(block: BlockSpec, fan: FanoutSpec, model: ModelRef, split: SplitRef, labels: np.ndarray,
                 judge: ModelRef | None = None, in_distribution: bool = True) -> list[Job]:
    """Every job of one block for one model, with its job_id."""
    ctx = ExpandContext(select_indices(block.indices or fan.indices, labels), labels, model.representation_dim,
                        fan.rng_seed)
    kind = get_kind(block.kind)
    common = Job(kind=block.kind, model_id=model.model_id, dataset=split.dataset, split=split.split,
                 model_digest=model.digest, dataset_fingerprint=split.fingerprint,
                 store_representation=block.store_representation, checkpoint=model.checkpoint,
                 dataset_path=split.path, dataset_source=split.source, image_shape=split.image_shape,
                 model_robust=model.robust, model_eps=model.eps, precision=fan.precision, compile=fan.compile,
                 in_distribution=in_distribution,
                 judge_model_id=judge.model_id if judge else "", judge_checkpoint=judge.checkpoint if judge else "")
    return [kind.make_job(common, block, fields) for fields in kind.expand(block, ctx)]


def plan_jobs(fan: FanoutSpec, models: dict[str, ModelRef], split: SplitRef, labels: np.ndarray,
              judge: ModelRef | None = None, targets: dict[str, tuple[SplitRef, np.ndarray]] | None = None
              ) -> list[Job]:
    """Every job of the fan-out, deterministic, without duplicates (blocks a kind relies on come first); `judge` is
    fanout.judge's model, where set; `targets` the (split, labels) of each dataset a block's kind takes its images
    from instead of the fan-out's split (JobKind.datasets: invert's targets_from); their rows are not
    in_distribution."""
    judge_of = judges(fan, models, judge)
    targets = targets or {}
    blocks = []
    for block in fan.jobs:
        needs = get_kind(block.kind).needs
        blocks += [*(needs(block) if needs else []), block]
    jobs: dict[str, Job] = {}
    for block in blocks:
        for name in block.models or fan.models:
            if get_kind(block.kind).fake_relu and models[name].no_fake_relu:
                raise ConfigError(f"fanout.jobs {block.kind}: {models[name].no_fake_relu}; leave {name} out of "
                                  "this block (give it `models:` without it)")
            other = other_dataset(block)
            block_split, block_labels = targets[other] if other else (split, labels)
            for job in expand_block(block, fan, models[name], block_split, block_labels, judge_of[name],
                                    in_distribution=other is None):
                jobs.setdefault(job.job_id, job)
    return list(jobs.values())


def pack(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Group compatible jobs (JobKind.batch_key: same model, kind, data and `batch` params) into batches of at most
    batch_size."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(get_kind(job.kind).batch_key(job), []).append(job)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]
