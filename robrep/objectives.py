"""The paper's objectives. Each builds a per-example loss x -> (B,) that PGD minimises.

Where the paper maximises (Eq. 5, the attacks' inner max), the loss is the negated quantity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robrep.pgd import LossFn, Objective


def inversion_loss(rep: torch.Tensor, target_rep: torch.Tensor) -> torch.Tensor:
    """Eq. 4 normalised as in Fig. 4: ||R(x) - R(x_t)||_2 / ||R(x_t)||_2. (B, D), (B, D) -> (B,)."""
    return (rep - target_rep).norm(dim=1) / target_rep.norm(dim=1).clamp_min(1e-12)


def _inversion(model: nn.Module, x: torch.Tensor, target_rep: torch.Tensor) -> torch.Tensor:
    return inversion_loss(model.representation(x), target_rep)


def inversion(model: nn.Module, target_rep: torch.Tensor) -> Objective:
    """Eq. 4 (and Eq. 1, the Sec. 2 pairs): match R(x) to target_rep (B, D).

    The constrained sweep of Fig. 4 is this loss under PGD with center=source and eps=r.
    """
    return Objective(_inversion, model, (target_rep,))


def interpolation_targets(rep_1: torch.Tensor, rep_2: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Eq. 6's target lam * R(x_1) + (1 - lam) * R(x_2). (B, D), (B, D), (B,) -> (B, D)."""
    lam = lam.view(-1, 1).to(rep_1.dtype)
    return lam * rep_1 + (1 - lam) * rep_2


def interpolation_lams(t: int) -> torch.Tensor:
    """The T+1 values {0, 1/T, ..., 1} of A.5."""
    return torch.linspace(0.0, 1.0, t + 1)


def _visualization(model: nn.Module, x: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    rep = model.representation(x, fake_relu=True)  # (B, D)
    return -rep.gather(1, coordinates.view(-1, 1)).squeeze(1)


def visualization(model: nn.Module, coordinates: torch.Tensor) -> Objective:
    """Eq. 5: maximise R(x)_i (loss -R(x)_i), with the gradient through a fake ReLU on the last activation
    (A.6.1), so a dead unit still gets a gradient. coordinates: (B,) int64."""
    return Objective(_visualization, model, (coordinates,))


class Manipulation:
    """Feature manipulation (Sec. 4.2.1): Eq. 5 from an image, stopped as soon as R(x)_i exceeds every
    other coordinate. Use as `pgd(m, x0, stop_fn=m.done, ...)`: `done` judges the iterate of the last call.
    """

    def __init__(self, model: nn.Module, coordinates: torch.Tensor):
        self.model, self.coordinates = model, coordinates
        self.rows = torch.arange(len(coordinates), device=coordinates.device)
        self._rep: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rep = self.model.representation(x, fake_relu=True)  # (B, D)
        self._rep = rep.detach()
        return -rep[self.rows, self.coordinates]

    def done(self) -> torch.Tensor:
        """(B,) bool: R(x)_i > max_{j != i} R(x)_j at the last evaluated iterate."""
        rep = self._rep.clone()
        chosen = rep[self.rows, self.coordinates]
        rep[self.rows, self.coordinates] = -math.inf
        return chosen > rep.max(dim=1).values


def untargeted_ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-CE(logits, y): minimising it maximises the true-class loss (Eq. 3's inner max). (B, K) -> (B,)."""
    return -F.cross_entropy(logits, labels, reduction="none")


def _untargeted_attack(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return untargeted_ce_loss(model(x).float(), labels)


def untargeted_attack(model: nn.Module, labels: torch.Tensor) -> Objective:
    """Eq. 3's inner max on the model's logits (in fp32 whatever the model's precision)."""
    return Objective(_untargeted_attack, model, (labels,))


def _rotate_shift(x: torch.Tensor, radians: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image (B, C, H, W) by radians (B,) and shift it by shift (B, 2) in [-1, 1] units,
    differentiably, padding with the border."""
    cos, sin = radians.cos(), radians.sin()
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def regularized_visualization(
    model: nn.Module,
    coordinates: torch.Tensor,
    *,
    jitter: int = 8,
    max_degrees: float = 10.0,
    generator: torch.Generator | None = None,
) -> LossFn:
    """The Lucid-style baseline of Fig. 10 for standard models: Eq. 5 on a copy of x randomly jittered
    (up to `jitter` pixels) and rotated (up to `max_degrees`), drawn afresh per example at every step, on x's
    device (`generator` must live there)."""
    rows = torch.arange(len(coordinates), device=coordinates.device)

    def loss(x: torch.Tensor) -> torch.Tensor:
        batch, size = x.shape[0], x.shape[-1]
        pixels = torch.randint(-jitter, jitter + 1, (batch, 2), generator=generator, device=x.device).to(x.dtype)
        angle = (torch.rand(batch, generator=generator, dtype=x.dtype, device=x.device) * 2 - 1) \
            * math.radians(max_degrees)
        moved = _rotate_shift(x, angle, 2 * pixels / size)
        return -model.representation(moved, fake_relu=True)[rows, coordinates]

    return loss
