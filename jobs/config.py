"""The experiment config: one YAML file per experiment, read by every entry point, validated at the door.

Unknown keys, wrong types and bad values raise ConfigError before Ray or any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from robrep.config import from_dict, load_yaml
from robrep.errors import ConfigError
from robrep.models import list_models
from robrep.train import AttackSpec


@dataclass(frozen=True)
class RaySpec:
    address: str | None = None  # None: start a local Ray on loopback; "auto" or "ray://host:10001": join one
    num_cpus: int | None = None  # local Ray only; None = all cores


@dataclass(frozen=True)
class DataSpec:
    """Where the experiment's data lives: <dir>/train.beton and <dir>/test.beton.

    digits and synthetic are built in (jobs.main builds them when missing); `files` means betons you
    built with `python -m jobs.build_dataset --out <dir>/train.beton ...` (ImageNet, CIFAR-10, ...).
    """

    source: Literal["digits", "synthetic", "files"] = "digits"
    resolution: int = 16  # pixels per side (digits, synthetic)
    test_fraction: float = 0.2  # digits
    split_seed: int = 0
    num_classes: int = 10  # synthetic
    per_class: int = 20  # synthetic, per split
    dir: str = "runs/digits/data"  # holds train.beton, test.beton and their sidecars

    def validate(self) -> None:
        if not 8 <= self.resolution <= 512:
            raise ConfigError(f"data.resolution={self.resolution} must be within [8, 512]")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction={self.test_fraction} must be within (0, 1)")

    def path(self, split: str) -> Path:
        return Path(self.dir).resolve() / f"{split}.beton"


@dataclass(frozen=True)
class ModelSpec:
    """One model to train. Standard when `attack` is absent; robust (adversarially trained) otherwise."""

    model_id: str
    arch: str = "small_cnn"
    width: int = 32
    epochs: int = 15
    batch_size: int = 64  # global, split across workers
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple[int, ...] = (10,)  # epochs at which lr is multiplied by lr_gamma (paper: 30, 60)
    lr_gamma: float = 0.1
    warmup_epochs: int = 0  # linear warmup from lr/10 before the step schedule
    label_smoothing: float = 0.0
    augment: Literal["rrc_flip", "crop_flip", "translate", "none"] | None = None  # None: the dataset's default
    padding: int = 4  # pixels, for crop_flip and translate
    seed: int = 0
    attack: AttackSpec | None = None
    eval_attack: AttackSpec | None = None  # PGD for adversarial test accuracy; None = no adversarial eval
    eval_every: int = 1  # epochs between evaluations during training (the last epoch is always evaluated)
    eval_max_images: int | None = None  # evaluate during training on the first n test images (None: all)
    bf16: bool = True  # bf16 autocast, on GPU only
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # with use_gpu
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = 0  # worker-group restarts from the last checkpoint before the run fails
    audit: bool = False  # each rank records its labels, pid and weight hash per epoch under <storage>/audit

    def validate(self) -> None:
        if self.arch not in list_models():
            raise ConfigError(f"train.model_id={self.model_id}: unknown arch {self.arch!r}; known: {list_models()}")
        for key in ("epochs", "batch_size", "num_workers", "width"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train {self.model_id}: {key}={getattr(self, key)} must be >= 1")
        if self.batch_size < self.num_workers:
            raise ConfigError(f"train {self.model_id}: batch_size {self.batch_size} < num_workers {self.num_workers}")
        if self.lr <= 0 or not 0 <= self.label_smoothing < 1 or self.warmup_epochs < 0 or self.max_failures < 0:
            raise ConfigError(f"train {self.model_id}: need lr > 0, 0 <= label_smoothing < 1, warmup_epochs >= 0, "
                              "max_failures >= 0")


@dataclass(frozen=True)
class IndexSpec:
    """Which images of the split: `first` n, an explicit `list`, n at `random` (seeded), or n `per_class`."""

    mode: Literal["first", "list", "random", "per_class"] = "first"
    n: int = 20
    values: tuple[int, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class CoordinateSpec:
    """Which coordinates of R: a `list`, n at `random` (seeded), or the `top` n of each start image."""

    mode: Literal["list", "random", "top"] = "random"
    n: int = 4
    values: tuple[int, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class JobSpec:
    """One block of jobs of one kind, expanded over models x images x its own grid (DESIGN §4 defaults)."""

    kind: Literal["invert", "invert_sweep", "pairs", "visualize", "manipulate", "interpolate", "top_activating"]
    inits: tuple[Literal["noise", "gray", "image"], ...] = ("noise", "image")  # invert, visualize
    constraint: Literal["l2", "linf", "unconstrained"] = "l2"
    eps: float = 1000.0  # [0,1]-pixel units; paper A.6: 1000, i.e. unconstrained
    step_size: float = 1.0  # paper A.6: 1
    steps: int = 200  # paper: 10,000 for inversion, 200 for visualization
    radii: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # invert_sweep: constraint radii around the source
    coordinates: CoordinateSpec = CoordinateSpec()  # visualize, manipulate, top_activating
    t: int = 4  # interpolate: T+1 values of lambda
    k: int = 3  # top_activating: top-k and bottom-k images per coordinate
    models: tuple[str, ...] = ()  # restrict this block to some of the fanout's models (e.g. pairs: standard ones)
    indices: IndexSpec | None = None  # this block's images, instead of fanout.indices
    store_representation: bool = False  # also store R(x') as a list<float32> column

    def validate(self) -> None:
        if self.steps < 1 or self.step_size <= 0 or self.eps <= 0:
            raise ConfigError(f"fanout.jobs {self.kind}: need steps >= 1, step_size > 0, eps > 0")
        if self.kind == "invert_sweep" and (not self.radii or min(self.radii) <= 0):
            raise ConfigError("fanout.jobs invert_sweep: radii must be a non-empty list of positive radii")
        if self.t < 1 or self.k < 1:
            raise ConfigError(f"fanout.jobs {self.kind}: t and k must be >= 1")
        if self.kind == "manipulate" and self.inits != ("image",) and "image" not in self.inits:
            raise ConfigError("fanout.jobs manipulate starts from images: use inits: [image]")


@dataclass(frozen=True)
class FanoutSpec:
    """Representation experiments for every model over chosen images of one split (paper Sec. 2 and 4)."""

    models: tuple[str, ...]  # model_ids in the store's models table, or robrep checkpoint folders
    split: Literal["test", "train"] = "test"
    indices: IndexSpec = IndexSpec()
    jobs: tuple[JobSpec, ...] = (JobSpec(kind="invert"),)
    rng_seed: int = 0
    batch_size: int = 64  # jobs per batched PGD loop
    max_in_flight: int = 4  # batches submitted and not yet committed
    workers: int = 2  # pool actors: one per CPU slot or GPU
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractional GPUs are fine, e.g. 0.25 puts four workers on a GPU
    max_retries: int = 3  # a batch whose worker dies is retried this often

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("fanout.models is empty; name at least one model_id")
        for key in ("batch_size", "max_in_flight", "workers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"fanout.{key}={getattr(self, key)} must be >= 1")
        if not self.jobs:
            raise ConfigError("fanout.jobs is empty; add at least one block such as {kind: invert}")


@dataclass(frozen=True)
class RangeSpec:
    low: float
    high: float


@dataclass(frozen=True)
class TuneSpec:
    """Ray Tune over PGD's step_size (log-uniform) and steps, with ASHA stopping bad trials early.

    objective inversion: minimise the final rep_dist_rel of Eq. 4 inversions from noise;
    objective attack: minimise adversarial accuracy under an `eps` attack (a stronger attack).
    """

    model: str  # a model_id in the store
    objective: Literal["inversion", "attack"] = "inversion"
    step_size: RangeSpec = RangeSpec(0.01, 1.0)
    steps: tuple[int, ...] = (50, 100, 200)  # the budgets to choose from
    report_every: int = 25  # steps between reports, the unit ASHA compares trials in
    num_samples: int = 8
    max_concurrent: int = 2
    constraint: Literal["l2", "linf", "unconstrained"] = "l2"
    eps: float = 1000.0  # inversion: the paper's 1000; attack: the radius to attack at
    default_step_size: float = 0.1  # the baseline (also tried as one of the trials)
    default_steps: int = 200
    tune_indices: IndexSpec = IndexSpec(mode="first", n=32)  # test images the trials run on
    holdout_indices: IndexSpec = IndexSpec(mode="list", values=tuple(range(100, 132)))  # for the final comparison
    output: str = "runs/tune/best.yaml"  # the best config, for `jobs.fanout --from-tune`

    def validate(self) -> None:
        if not 0 < self.step_size.low < self.step_size.high:
            raise ConfigError("tune.step_size needs 0 < low < high")
        if not self.steps or min(self.steps) < self.report_every or self.report_every < 1:
            raise ConfigError("tune.steps must be budgets >= tune.report_every >= 1")
        if self.num_samples < 1 or self.eps <= 0:
            raise ConfigError("tune.num_samples must be >= 1 and tune.eps > 0")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    store: str  # root of the Parquet store
    storage_path: str  # Ray Train checkpoints and final models
    ray: RaySpec = RaySpec()
    data: DataSpec = DataSpec()
    train: tuple[ModelSpec, ...] = ()
    fanout: FanoutSpec | None = None
    tune: TuneSpec | None = None

    def validate(self) -> None:
        ids = [m.model_id for m in self.train]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"train: duplicate model_id in {ids}")

    @property
    def store_root(self) -> str:
        """A pyarrow filesystem URI as given, or an absolute local path."""
        return self.store if "://" in self.store else str(Path(self.store).resolve())

    @property
    def storage_root(self) -> Path:
        return Path(self.storage_path).resolve()


INVERSION_KINDS = ("invert", "invert_sweep", "pairs", "interpolate")


def apply_tuned(data: dict, tuned_path: str | Path) -> dict:
    """Put the step_size and steps that jobs.tune found into every inversion-like fanout block."""
    import yaml

    tuned_path = Path(tuned_path)
    if not tuned_path.is_file():
        raise ConfigError(f"--from-tune {str(tuned_path)!r} does not exist; run python -m jobs.tune first")
    tuned = yaml.safe_load(tuned_path.read_text())
    if not isinstance(tuned, dict) or tuned.get("objective") != "inversion":
        raise ConfigError(f"{tuned_path} is not an inversion result of jobs.tune (attack settings are for "
                          "jobs.evaluate --step-size/--steps)")
    blocks = (data.get("fanout") or {}).get("jobs") or []
    for block in blocks:
        if isinstance(block, dict) and block.get("kind") in INVERSION_KINDS:
            block.update(step_size=float(tuned["step_size"]), steps=int(tuned["steps"]))
    return data


def load_config(path: str | Path, overrides: list[str] = (), from_tune: str | None = None) -> ExperimentConfig:
    data = load_yaml(path, overrides)
    if from_tune:
        data = apply_tuned(data, from_tune)
    return from_dict(ExperimentConfig, data)
