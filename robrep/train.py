"""Standard and adversarial (Madry et al.; paper A.3) training steps, and clean/adversarial evaluation."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from robrep.core.config import Bounds, Count, NonNegative, NonNegativeFloat, Positive, Seed
from robrep.core.errors import ConfigError
from robrep.core.names import check_name
from robrep.fast import autocast, eval_mode, frozen
from robrep.models import list_models
from robrep.objectives import untargeted_attack
from robrep.pgd import pgd

MAX_ATTACK_STEPS = 100_000  # paper: 7 (training), 20 to 100 (evaluation)


@dataclass(frozen=True)
class AttackSpec:
    """An L2 PGD adversary. eps and step_size in [0,1]-pixel units (paper A.3: eps=3.0, 7 steps, step 0.5)."""

    eps: NonNegativeFloat
    steps: Annotated[int, Bounds(1, MAX_ATTACK_STEPS)]
    step_size: Positive
    constraint: str = "l2"
    random_start: bool = True
    restarts: Count = 1  # > 1 keeps, per example, the strongest of several random starts
    # eps and step_size are given for images of this many pixels a side; a dataset of another data.resolution
    # scales both by resolution / at_resolution (an L2 norm grows with the square root of the pixel count).
    at_resolution: Annotated[int, Bounds(1, 4096, note="pixels a side")] | None = None

    def validate(self) -> None:
        if self.constraint not in ("l2", "linf"):
            raise ConfigError(f"attack constraint={self.constraint!r}: use 'l2' or 'linf'")
        if self.restarts > 1 and not self.random_start:
            raise ConfigError(f"attack restarts={self.restarts}: more than one start needs random_start: true")

    def at(self, resolution: int) -> AttackSpec:
        """This attack for images of `resolution` px a side: eps and step_size scaled where at_resolution is set."""
        if self.at_resolution is None or self.constraint != "l2":
            return self
        scale = resolution / self.at_resolution
        return dataclasses.replace(self, eps=round(self.eps * scale, 6), step_size=round(self.step_size * scale, 6),
                                   at_resolution=None)

    def ramped(self, fraction: float) -> AttackSpec:
        """The attack at `fraction` (0..1] of its radius and step (adversarial training's eps warm-up)."""
        if fraction >= 1:
            return self
        return dataclasses.replace(self, eps=self.eps * fraction, step_size=self.step_size * fraction)


@dataclass(frozen=True)
class ModelSpec:
    """One model to train (an entry of the config's `train:` list). Standard when `attack` is absent;
    robust (adversarially trained, paper A.3) otherwise. Its Ray Train settings (num_workers, ...) are
    cluster.specs.TrainSpec's."""

    model_id: str
    arch: str = "small_cnn"
    width: Count = 32  # small_cnn only: channels of its first stage (doubled at each of the first two downsamplings)
    # small_cnn only: conv-BN-ReLU stages (strides 1, 2, 2, ...). 0: as many as halve the image down to `pool` pixels
    # a side (16 px, pool 2: 4 stages; 24 px: 5), set from data.resolution when the config is read.
    depth: Annotated[int, Bounds(0, 64, note="0: as many stages as halve the image down to pool pixels a side")] = 3
    pool: Count = 1  # small_cnn only: R(x) is the last stage average-pooled to a pool x pool grid (1: global)
    epochs: Count = 15
    batch_size: Count = 64  # global, split across workers
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"  # paper A.3: SGD with momentum
    lr: Positive = 0.1  # sgd: the lr; onecycle: the peak lr
    momentum: Annotated[float, Bounds(0, 1, high_open=True)] = 0.9  # sgd only
    weight_decay: NonNegativeFloat = 5e-4  # sgd and adam: L2 added to the gradient; adamw: decoupled
    schedule: Literal["step", "onecycle", "cosine"] = "step"  # step: per epoch (milestones); the others per batch
    lr_milestones: tuple[Count, ...] = (10,)  # step: epochs at which lr is multiplied by lr_gamma (paper: 30, 60)
    lr_gamma: Positive = 0.1
    warmup_epochs: NonNegative = 0  # step and cosine: linear warmup from lr/10 (onecycle warms up by itself)
    # Adversarial training: eps and step size ramp up linearly from 0 over this fraction of the training steps
    # (0: the full attack from the first step, as the paper).
    attack_warmup: Annotated[float, Bounds(0, 1, high_open=True, note="a fraction of training")] = 0.0
    label_smoothing: Annotated[float, Bounds(0, 1, high_open=True)] = 0.0
    augment: Literal["rrc_flip", "crop_flip", "translate", "none"] | None = None  # None: the dataset's default
    padding: Annotated[int, Bounds(0, 512)] = 4  # pixels, for crop_flip and translate
    rng_seed: Seed = 0  # initial weights and the shuffle of each epoch
    attack: AttackSpec | None = None
    eval_attack: AttackSpec | None = None  # PGD for adversarial test accuracy; None = no adversarial eval
    eval_every: Count = 1  # epochs between evaluations during training (the last epoch is always evaluated)
    # epochs between checkpoints (the last epoch always has one): a resumed or restarted run replays the epochs after
    # the last checkpoint, the same way (seeded), so > 1 trades replayed work for less time saving small models
    checkpoint_every: Count = 1
    eval_max_images: Count | None = None  # evaluate during training on the first n test images (None: all)
    precision: Literal["fp32", "bf16"] = "fp32"  # of the attack and the forward pass (bf16 autocast); GPU presets: bf16
    compile: bool = False  # torch.compile the model for the training step and the attack (`compile: on`)
    audit: bool = False  # each rank records its labels, pid and weight hash per epoch under <storage>/audit

    def validate(self) -> None:
        check_name(self.model_id, "train.model_id")
        if self.arch not in list_models():
            raise ConfigError(f"train.model_id={self.model_id}: unknown arch {self.arch!r}; known: {list_models()}")
        if self.arch != "small_cnn" and (self.width, self.depth, self.pool) != (32, 3, 1):
            raise ConfigError(f"train {self.model_id}: width, depth and pool are small_cnn settings; arch "
                              f"{self.arch} has its own")
        if self.attack_warmup and self.attack is None:
            raise ConfigError(f"train {self.model_id}: attack_warmup={self.attack_warmup} needs an attack")
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)):
            raise ConfigError(f"train {self.model_id}: lr_milestones={list(self.lr_milestones)} must be increasing "
                              "epochs, each once")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"train {self.model_id}: warmup_epochs={self.warmup_epochs} must be fewer than "
                              f"epochs={self.epochs}")

    @property
    def arch_kwargs(self) -> dict:
        if self.arch != "small_cnn":
            return {}
        return {"width": self.width, "depth": self.depth, "pool": self.pool}

    def at(self, resolution: int) -> ModelSpec:
        """This spec for images of `resolution` px a side: attacks with at_resolution scaled (AttackSpec.at), and
        depth 0 made the stages that halve the image down to `pool` pixels a side."""
        depth, side = self.depth, resolution
        if depth == 0:
            depth = 1
            while side > self.pool and depth < 8:  # each stride-2 stage: ceil(side / 2)
                side, depth = (side + 1) // 2, depth + 1
        return dataclasses.replace(self, attack=self.attack and self.attack.at(resolution),
                                   eval_attack=self.eval_attack and self.eval_attack.at(resolution), depth=depth)

    @property
    def resolved(self) -> bool:
        """Whether `at` has nothing left to set."""
        scaled = any(a is not None and a.at_resolution for a in (self.attack, self.eval_attack))
        return not scaled and self.depth > 0

    def attack_at(self, step: int, total_steps: int) -> AttackSpec | None:
        """The training attack at global step `step` of `total_steps` (the eps warm-up; None: standard training)."""
        if self.attack is None or not self.attack_warmup:
            return self.attack
        return self.attack.ramped((step + 1) / (self.attack_warmup * total_steps))


def make_optimizer(spec: ModelSpec, parameters) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    optimizer = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.AdamW
    return optimizer(parameters, lr=spec.lr, weight_decay=spec.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, spec: ModelSpec, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    """The spec's lr schedule. `step` is stepped once per epoch (x lr_gamma at each milestone, after an optional
    linear warmup from lr/10); `onecycle` and `cosine` once per batch (step_per_batch)."""
    lr = torch.optim.lr_scheduler
    if spec.schedule == "onecycle":
        return lr.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch)
    unit = steps_per_epoch if spec.schedule == "cosine" else 1
    warmup, total = spec.warmup_epochs * unit, spec.epochs * unit
    main = (lr.CosineAnnealingLR(optimizer, max(1, total - warmup)) if spec.schedule == "cosine" else
            lr.MultiStepLR(optimizer, [m - spec.warmup_epochs for m in spec.lr_milestones], spec.lr_gamma))
    if warmup == 0:
        return main
    ramp = lr.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
    return lr.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def step_per_batch(spec: ModelSpec) -> bool:
    return spec.schedule != "step"


def adversarial_examples(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec, keep: str = "last", precision: str = "fp32",
    capture: bool = False,
) -> torch.Tensor:
    """PGD that maximises CE within the eps-ball, with the model in eval mode (BN statistics frozen) and its
    parameters frozen (input gradients only), under `precision` (robrep.fast.autocast).

    keep="best" returns each example's highest-loss iterate (for evaluation), "last" the final one. capture: each
    step replayed as a CUDA graph (robrep.pgd).
    """
    with eval_mode(model), frozen(model), autocast(x.device, precision):
        result = pgd(
            untargeted_attack(model, y),
            x,
            eps=attack.eps,
            step_size=attack.step_size,
            steps=attack.steps,
            constraint=attack.constraint,
            random_start=attack.random_start,
            restarts=attack.restarts,
            keep=keep,
            capture=capture,
        )
    return result.x


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackSpec | None,
    attack_model: nn.Module | None = None,
    label_smoothing: float = 0.0,
    precision: str = "fp32",
    capture: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on clean (attack=None) or adversarial inputs. Returns (mean loss, #correct) as 0-d tensors on
    the device, so a loop that sums them syncs with the host once per epoch, not per step.

    attack_model: the module the attack differentiates (default `model`). Under DDP pass the unwrapped
    module, so the attack's input-gradient passes never enter DDP's gradient synchronisation.
    precision: of the attack and the forward (bf16 autocast); backward runs outside autocast. capture: the attack's
    steps replayed as a CUDA graph (robrep.pgd).
    """
    attacked = model if attack_model is None else attack_model  # (a compiled module has no truth value)
    inputs = x if attack is None else adversarial_examples(attacked, x, y, attack, precision=precision,
                                                             capture=capture)
    model.train()
    with autocast(x.device, precision):
        logits = model(inputs)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


def count_correct(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], attack: AttackSpec | None,
    attack_model: nn.Module | None = None, precision: str = "fp32", capture: bool = False,
) -> tuple[int, int, int]:
    """(examples, clean correct, adversarially correct under `attack`; 0 when None) over (x, y) batches.

    The attack runs on attack_model (default `model`; e.g. a robrep.fast.FastModel) in `precision`; every
    prediction, clean and adversarial, is `model`'s own, in fp32. An example counts as robust only if the
    strongest iterate of every restart is still classified right. capture: the attack's steps replayed as a CUDA
    graph (robrep.pgd).
    """
    model.eval()
    attacked = model if attack_model is None else attack_model
    n = clean = adv = 0
    for x, y in batches:
        with torch.no_grad():
            clean += int((model(x).argmax(1) == y).sum())
        if attack is not None:
            x_adv = adversarial_examples(attacked, x, y, attack, keep="best", precision=precision, capture=capture)
            with torch.no_grad():
                adv += int((model(x_adv).argmax(1) == y).sum())
        n += len(y)
    return n, clean, adv


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], attack: AttackSpec | None,
             attack_model: nn.Module | None = None, precision: str = "fp32", capture: bool = False) -> dict:
    """Clean accuracy, and adversarial accuracy under `attack` (NaN when None), over (x, y) batches
    (see count_correct for attack_model, precision and capture)."""
    n, clean, adv = count_correct(model, batches, attack, attack_model, precision, capture)
    if n == 0:
        raise ValueError("evaluate() got no batches")
    return {"n": n, "clean_acc": clean / n, "adv_acc": adv / n if attack is not None else float("nan")}


INDEPENDENT_ATTACKS = ("apgd_ce", "apgd_dlr")  # AutoAttack's APGD with either loss (torchattacks)


def apgd_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec, loss: str, steps: int
                  ) -> torch.Tensor:
    """AutoAttack's APGD (Croce & Hein 2020) from `torchattacks`, an implementation independent of ours, at the
    attack's eps and norm, on the fp32 model: a bug in our PGD that weakens it shows up as APGD finding more."""
    import torchattacks

    norm = {"l2": "L2", "linf": "Linf"}[attack.constraint]
    with eval_mode(model), frozen(model):
        return torchattacks.APGD(model, norm=norm, eps=attack.eps, steps=steps, loss=loss, seed=0)(x, y)


def evaluate_independently(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], attack: AttackSpec,
                           apgd_steps: int, attack_model: nn.Module | None = None, precision: str = "fp32",
                           capture: bool = False) -> dict:
    """Clean accuracy; accuracy under our PGD (`pgd_acc`), APGD-CE (`apgd_ce_acc`) and, with >= 3 classes, APGD-DLR
    (`apgd_dlr_acc`; NaN otherwise) at the same eps and norm; and `adv_acc`, the robust accuracy: the fraction
    still right under every attack (per example, so never above the lowest of them)."""
    model.eval()
    attacked = model if attack_model is None else attack_model
    counts = {"n": 0, "clean": 0, "pgd": 0, "apgd_ce": 0, "apgd_dlr": 0, "adv": 0}
    classes = None
    for x, y in batches:
        with torch.no_grad():
            logits = model(x)
        classes = logits.shape[1]
        right = {"clean": logits.argmax(1) == y}
        x_pgd = adversarial_examples(attacked, x, y, attack, keep="best", precision=precision, capture=capture)
        losses = ("ce", "dlr") if classes >= 3 else ("ce",)
        candidates = {"pgd": x_pgd, **{f"apgd_{loss}": apgd_examples(model, x, y, attack, loss, apgd_steps)
                                       for loss in losses}}
        with torch.no_grad():
            for name, x_adv in candidates.items():
                right[name] = model(x_adv).argmax(1) == y
        every = torch.stack(list(right.values())).all(0)
        for name, hits in (*right.items(), ("adv", every)):
            counts[name] += int(hits.sum())
        counts["n"] += len(y)
    n = counts["n"]
    if n == 0:
        raise ValueError("evaluate_independently() got no batches")
    return {"n": n, "clean_acc": counts["clean"] / n, "pgd_acc": counts["pgd"] / n,
            "apgd_ce_acc": counts["apgd_ce"] / n,
            "apgd_dlr_acc": counts["apgd_dlr"] / n if classes >= 3 else float("nan"), "adv_acc": counts["adv"] / n}
