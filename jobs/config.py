"""The experiment config: one YAML file per experiment, read by every entry point, validated at the door.

Unknown keys, wrong types and bad values raise ConfigError before Ray or any worker starts. The sections'
types live where their values are used: ModelSpec and AttackSpec in robrep/train.py, FanoutSpec in
robrep/fanout/plan.py, each job kind's block in robrep/fanout/kinds/, their Ray settings in cluster/specs.py
(TrainSpec, FanoutRunSpec); the entry points' own sections live here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pyarrow.fs as pafs
import yaml

from cluster.specs import FanoutRunSpec, TrainSpec
from robrep.core.config import (
    Bounds,
    Count,
    NonNegative,
    NonNegativeFloat,
    Positive,
    Seed,
    distinct,
    from_dict,
    load_yaml,
)
from robrep.core.errors import ConfigError, StorageError
from robrep.core.location import check, check_writable, filesystem, is_uri, join, parent, read_bytes, redact
from robrep.core.names import check_name
from robrep.fanout.job import MAX_STEPS
from robrep.fanout.registry import KINDS
from robrep.fanout.selection import IndexSpec
from robrep.train import AttackSpec

MAX_IMAGES = 100_000_000


@dataclass(frozen=True)
class RaySpec:
    address: str | None = None  # None: start a local Ray on loopback; "auto" or "ray://host:10001": join one
    num_cpus: Count | None = None  # local Ray only; None = all cores
    verbose: bool = False  # Ray's own messages (per-report lines, worker logs) on the console (--verbose)


@dataclass(frozen=True)
class DataSpec:
    """Where the experiment's data lives: <dir>/train.beton and <dir>/test.beton.

    digits and synthetic are built in (jobs.main builds them when missing); `files` means betons you
    built with `python -m jobs.build_dataset --out <dir>/train.beton ...` (ImageNet, CIFAR-10, ...).

    FFCV reads POSIX files, so `dir` is a local or NFS folder. On nodes that share no disk, set `stage_from`
    to a folder or URI (s3://bucket/data) that holds the betons and their sidecars: every process that reads
    a split first copies it from there to its own node's `dir`, once per node (datasets/stage.py), and
    jobs.build_dataset / jobs.main upload what they build there.
    """

    source: Literal["digits", "synthetic", "files"] = "digits"
    resolution: Annotated[int, Bounds(8, 512)] = 16  # pixels per side (digits, synthetic)
    test_fraction: Annotated[float, Bounds(0, 1, low_open=True, high_open=True)] = 0.2  # digits
    rng_seed: Seed = 0  # the train/test split (digits), the images (synthetic)
    num_classes: Annotated[int, Bounds(2, 10_000)] = 10  # synthetic
    per_class: Count = 20  # synthetic, per split
    dir: str = "runs/digits/data"  # holds train.beton, test.beton and their sidecars; local or NFS
    stage_from: str | None = None  # a path or URI every node copies the betons from into its own `dir`

    def validate(self) -> None:
        if is_uri(self.dir):
            raise ConfigError(f"data.dir={redact(self.dir)!r}: FFCV reads local or NFS files; give a path, and put "
                              "the URI in data.stage_from to copy the betons from there to each node")
        check(self.dir, "data.dir")
        if self.stage_from is not None:
            check(self.stage_from, "data.stage_from")

    def path(self, split: str) -> Path:
        """The split's .beton on this node (not yet staged: see `local`)."""
        return Path(self.dir).resolve() / f"{split}.beton"

    def stage_source(self, split: str) -> str | None:
        """Where the split is staged from (None: `dir` is shared or local-only)."""
        return join(check(self.stage_from, "data.stage_from"), f"{split}.beton") if self.stage_from else None

    def local(self, split: str) -> Path:
        """The split's .beton on this node, copied from `stage_from` first where that is set."""
        from datasets.stage import stage

        return Path(stage(str(self.path(split)), self.stage_source(split)))


@dataclass(frozen=True)
class RangeSpec:
    low: Positive
    high: Positive


@dataclass(frozen=True)
class TuneSpec:
    """Ray Tune over PGD's step_size (log-uniform) and steps, with ASHA stopping bad trials early.

    objective inversion: minimise the final rep_dist_rel of Eq. 4 inversions from noise;
    objective attack: minimise adversarial accuracy under an `eps` attack (a stronger attack).
    """

    model: str  # a model_id in the store
    objective: Literal["inversion", "attack"] = "inversion"
    step_size: RangeSpec = RangeSpec(0.01, 1.0)
    steps: tuple[Annotated[int, Bounds(1, MAX_STEPS)], ...] = (50, 100, 200)  # the budgets to choose from
    report_every: Count = 25  # steps between reports, the unit ASHA compares trials in
    num_samples: Count = 8
    max_concurrent: Count = 2
    constraint: Literal["l2", "linf", "unconstrained"] = "l2"
    eps: Positive = 1000.0  # inversion: the paper's 1000; attack: the radius to attack at
    default_step_size: Positive = 0.1  # the baseline (also tried as one of the trials)
    default_steps: Annotated[int, Bounds(1, MAX_STEPS)] = 200
    tune_indices: IndexSpec = IndexSpec(mode="first", n=32)  # test images the trials run on
    holdout_indices: IndexSpec = IndexSpec(mode="list", values=tuple(range(100, 132)))  # for the final comparison
    output: str = "runs/tune/best.yaml"  # the best config (a path or URI), for `jobs.fanout --from-tune`
    cpus_per_trial: Positive = 1.0
    gpus_per_trial: NonNegativeFloat = 0.0  # > 0: each trial (and the held-out comparison) runs on a GPU
    max_failures: NonNegative = 0  # retries of a trial whose worker dies; a trial that still fails is left out
    precision: Literal["fp32", "bf16"] = "fp32"  # of the trials' PGD (robrep/fast.py); the metric is measured in fp32
    compile: bool = False  # torch.compile each trial's model (pays off for long trials on a GPU)

    def validate(self) -> None:
        check_name(self.model, "tune.model")
        if not self.step_size.low < self.step_size.high:  # both > 0: RangeSpec's bounds
            raise ConfigError("tune.step_size needs 0 < low < high")
        if not self.steps or min(self.steps) < self.report_every:  # report_every >= 1: its bounds
            raise ConfigError("tune.steps must be budgets >= tune.report_every >= 1")
        distinct(self.steps, "tune.steps", "budget")
        check(self.output, "tune.output")


# Paper A.4: PGD-20, step 0.375, eps 3.0 (ImageNet scale), no random start.
PAPER_EVAL_ATTACK = AttackSpec(eps=3.0, steps=20, step_size=0.375, random_start=False)


@dataclass(frozen=True)
class EvaluateSpec:
    """jobs.evaluate: clean and PGD accuracy of one model. The model is a model_id in the store (`model`),
    a robrep checkpoint folder (`checkpoint`), a robustness-library .pt to import (`robustness_checkpoint` with
    `arch` and `model_id`), or a plain torchvision / timm state dict to import (`state_dict` with `arch` such as
    torchvision.densenet161 or timm.convnext_tiny, `model_id`, and the `mean` and `std` it was trained with)."""

    model: str | None = None
    checkpoint: str | None = None
    robustness_checkpoint: str | None = None
    state_dict: str | None = None  # a plain torchvision / timm state dict (.pt, .pth) to import
    robustbench: str | None = None  # a RobustBench model name, e.g. Carmon2019Unlabeled
    robustbench_dataset: str | None = None  # cifar10, cifar100 or imagenet
    threat_model: str = "Linf"  # RobustBench's leaderboard: Linf, L2 or corruptions
    robustbench_dir: str = "models"  # RobustBench's model_dir (a folder or a URI)
    arch: str | None = None  # of an imported checkpoint, e.g. cifar_resnet50, torchvision.densenet161, timm.resnet50
    mean: tuple[Annotated[float, Bounds(0, 1)], ...] | None = None  # a state dict's normalisation (none in the files)
    std: tuple[Positive, ...] | None = None
    model_id: str | None = None  # its name in the store (default: the checkpoint's)
    data: str | None = None  # the test .beton (default: <data.dir>/test.beton)
    attack: AttackSpec = PAPER_EVAL_ATTACK
    max_images: Annotated[int, Bounds(1, MAX_IMAGES)] | None = None  # the first n test images (None: all)
    batch_size: Annotated[int, Bounds(1, 65_536)] = 100
    shards: Annotated[int, Bounds(1, 10_000)] = 2  # Ray tasks the test set is split over
    gpus_per_shard: NonNegativeFloat = 0.0
    cpus_per_shard: Positive = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"  # of the attack (robrep/fast.py); predictions are in fp32
    compile: bool = False  # torch.compile the attacked model
    # AutoAttack's APGD-CE and -DLR (torchattacks) cross-check our PGD; 0: not run
    apgd_steps: Annotated[int, Bounds(0, 100_000, note="0: no APGD")] = 100

    def validate(self) -> None:
        if self.model_id is not None:
            check_name(self.model_id, "evaluate.model_id")
        given = [k for k in ("model", "checkpoint", "robustness_checkpoint", "state_dict", "robustbench")
                 if getattr(self, k)]
        if len(given) != 1:
            raise ConfigError("evaluate needs exactly one of model (a model_id in the store), checkpoint (a robrep "
                              "checkpoint folder), robustness_checkpoint or state_dict (a .pt to import), robustbench "
                              f"(a RobustBench model name); got {given or 'none'}")
        if self.robustbench:
            if self.arch:
                raise ConfigError("evaluate.arch: a RobustBench model's architecture is RobustBench's own; drop --arch")
            from robrep.models.robustbench import parse

            parse(f"{self.robustbench_dataset}.{self.threat_model}.{self.robustbench}")
            check_name(self.model_id or self.robustbench, "evaluate.model_id (default: the RobustBench name)")
            check(self.robustbench_dir, "evaluate.robustbench_dir")
        for key in ("robustness_checkpoint", "state_dict"):
            if getattr(self, key) and not (self.arch and self.model_id):
                raise ConfigError(f"evaluate.{key} needs evaluate.arch and evaluate.model_id (--arch, --model-id)")
        if self.state_dict and not (self.mean and self.std and len(self.mean) == len(self.std)):
            raise ConfigError("evaluate.state_dict needs the normalisation it was trained with, one value per "
                              "channel: --set evaluate.mean=[0.485,0.456,0.406] --set evaluate.std=[0.229,0.224,0.225]")
        for key in ("checkpoint", "robustness_checkpoint", "state_dict"):
            if getattr(self, key):
                check(getattr(self, key), f"evaluate.{key}")
        if self.data is not None and is_uri(self.data):
            raise ConfigError(f"evaluate.data={redact(self.data)!r}: FFCV reads local or NFS files; give a path")


@dataclass(frozen=True)
class BuildSpec:
    """jobs.build_dataset for one .beton from any source (without it, jobs.build_dataset builds `data:`)."""

    source: Literal["digits", "cifar10", "imagefolder", "restricted_imagenet", "synthetic"]
    out: str  # the .beton to write; its sidecar goes beside it
    root: str | None = None  # the source folder (imagefolder, restricted_imagenet, cifar10)
    split: Literal["train", "test"] = "train"
    max_resolution: Annotated[int, Bounds(8, 16_384)] | None = None  # resize so the longer side <= this
    write_mode: Literal["raw", "jpg", "proportion", "smart"] = "raw"
    jpeg_quality: Annotated[int, Bounds(1, 100)] = 90
    compress_probability: Annotated[float, Bounds(0, 1)] = 0.5  # for write_mode proportion
    num_workers: Count = 2
    augment: Literal["rrc_flip", "crop_flip", "translate", "none"] | None = None  # loaders' default (by source)
    strict: bool = False  # a corrupt or unreadable file is an error
    resolution: Annotated[int, Bounds(8, 512)] = 32  # digits and synthetic only
    num_classes: Annotated[int, Bounds(2, 10_000)] = 10  # synthetic only
    per_class: Count = 20  # synthetic only
    rng_seed: Seed = 0  # digits: the train/test split; synthetic: the images

    def validate(self) -> None:
        if self.source in ("cifar10", "imagefolder", "restricted_imagenet") and not self.root:
            raise ConfigError(f"build.source {self.source} needs build.root (--root): the folder to read")
        if is_uri(self.out):
            raise ConfigError(f"build.out={self.out!r}: FFCV writes local or NFS files; give a path, not a URI")
        if Path(self.out).is_dir() or not self.out.endswith(".beton"):
            raise ConfigError(f"build.out={self.out!r} must be the path of a .beton file to write, e.g. /data/x.beton")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    store: str | None = None  # root of the Parquet store: a path or a URI (s3://bucket/prefix)
    storage_path: str | None = None  # Ray Train checkpoints, final and imported models
    report_dir: str | None = None  # the report's folder (default: `report` beside a local store, else in storage_path)
    ray: RaySpec = RaySpec()
    data: DataSpec = field(default_factory=DataSpec)
    train: tuple[TrainSpec, ...] = ()
    fanout: FanoutRunSpec | None = None
    tune: TuneSpec | None = None
    evaluate: EvaluateSpec | None = None
    # jobs.main: models to import (published checkpoints, RobustBench names) and evaluate before the fan-out, each
    # an evaluate: section of its own (YAML anchors share the attack); see jobs/configs/robust_zoo.yaml
    zoo: tuple[EvaluateSpec, ...] = ()
    build: BuildSpec | None = None

    def validate(self) -> None:
        check_name(self.name, "name")
        ids = [m.model_id for m in self.train]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"train: duplicate model_id in {ids}")
        zoo = [spec.model_id or spec.robustbench for spec in self.zoo]
        if None in zoo:
            raise ConfigError("zoo: every entry needs a model_id (or a robustbench name, its default)")
        if len(set(zoo)) != len(zoo) or set(zoo) & set(ids):
            raise ConfigError(f"zoo: each model_id once, and none of train's: {zoo}")
        for key in ("store", "storage_path", "report_dir"):
            if getattr(self, key) is not None:
                check(getattr(self, key), key)

    def writable(self, *keys: str) -> None:
        """StorageError unless each location named (store, storage_path, report_dir: the report's folder) can be
        written from here: the entry points that write call this first, so a read-only store is one error line
        before any work, with nothing written."""
        roots = {"store": lambda: self.store_root, "storage_path": lambda: self.storage_root,
                 "report_dir": lambda: self.report_root}
        for key in keys:
            check_writable(roots[key](), key)

    @property
    def store_root(self) -> str:
        """A pyarrow filesystem URI as given, or an absolute local path."""
        if not self.store:
            raise ConfigError("this entry point needs a store: set store: in the config, or --store / --set store=...")
        return check(self.store, "store")

    @property
    def existing_store_root(self) -> str:
        """store_root, for the entry points that only read a store (jobs.report, jobs.store): a folder that is not
        there is an error, not an empty store."""
        root = self.store_root
        fs, base = filesystem(root)
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            raise StorageError(f"store={redact(root)!r}: there is no store there (no such folder); give the store's "
                               "root, the folder that holds results/ and models/")
        return root

    @property
    def storage_root(self) -> str:
        """Ray Train's and Tune's runs, final and imported models: a URI or an absolute path (shared by all nodes)."""
        if not self.storage_path:
            raise ConfigError("this entry point needs storage_path (checkpoints): --set storage_path=/shared/ckpt "
                              "or s3://bucket/ckpt")
        return check(self.storage_path, "storage_path")

    @property
    def report_root(self) -> str:
        """The report's folder: report_dir, else `report` beside the store."""
        if self.report_dir:
            return check(self.report_dir, "report_dir")
        return join(parent(self.store_root), "report")


def apply_tuned(data: dict, tuned_path: str) -> dict:
    """Put the step_size and steps that jobs.tune found (a file at a path or URI) into every tunable fanout block."""
    tuned_path = check(tuned_path, "--from-tune")
    try:
        text = read_bytes(tuned_path).decode()
    except FileNotFoundError as e:
        raise ConfigError(f"--from-tune {redact(tuned_path)!r} does not exist; run python -m jobs.tune first") from e
    except (StorageError, OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--from-tune {redact(tuned_path)!r} cannot be read: {e}") from e
    try:
        tuned = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"--from-tune {str(tuned_path)!r} is not a jobs.tune result (not YAML: {e})") from e
    if not isinstance(tuned, dict) or tuned.get("objective") != "inversion":
        raise ConfigError(f"{tuned_path} is not an inversion result of jobs.tune (attack settings are for "
                          "jobs.evaluate --step-size/--steps)")
    step_size, steps = tuned.get("step_size"), tuned.get("steps")
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not math.isfinite(step_size) \
            or step_size <= 0 or isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"{tuned_path}: step_size must be a number > 0 and steps an integer >= 1; got "
                          f"step_size={step_size!r}, steps={steps!r}")
    blocks = (data.get("fanout") or {}).get("jobs") or []
    for block in blocks:
        if isinstance(block, dict) and block.get("kind") in KINDS and KINDS[block["kind"]].tunable:
            block.update(step_size=float(step_size), steps=steps)
    return data


def load_config(path: str | Path | None, overrides: list[str] = (), from_tune: str | None = None,
                values: dict | None = None) -> ExperimentConfig:
    """The config file (none: start empty, for entry points whose flags say everything), then the `--set`
    overrides, then `values` ({dotted key: value}, from flags), then a jobs.tune result; validated."""
    from robrep.core.config import apply_overrides, set_value

    data = load_yaml(path) if path else {}
    apply_overrides(data, list(overrides))
    for dotted, value in (values or {}).items():
        set_value(data, dotted, value)
    if from_tune:
        data = apply_tuned(data, from_tune)
    return at_resolution(from_dict(ExperimentConfig, data))


def at_resolution(config: ExperimentConfig) -> ExperimentConfig:
    """The train specs at data.resolution (ModelSpec.at): attacks with `at_resolution` scaled, so a preset tuned at
    16 px keeps its meaning at 24 px, and small_cnn's depth 0 set. Only built-in sources have a data.resolution that
    is the images' size."""
    unresolved = [s for s in config.train if not s.resolved]
    if not unresolved:
        return config
    if config.data.source == "files":
        raise ConfigError(f"train {unresolved[0].model_id}: attack at_resolution and depth 0 follow data.resolution, "
                          "which data.source files does not set; give eps and depth for your images")
    return dataclasses.replace(config, train=tuple(s.at(config.data.resolution) for s in config.train))
