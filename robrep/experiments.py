"""Batched representation experiments on tensors: each returns per-example measurements for the store.

Inputs are already-loaded tensors; loading models and images is the caller's job (cluster/ workers).
"""

from __future__ import annotations

import torch
from torch import nn

from robrep.objectives import inversion
from robrep.pgd import pgd


def noise_image(shape: tuple[int, ...], rng_seed: int) -> torch.Tensor:
    """The paper's noise start (A.6 notebooks): randn/20 + 0.5, clamped to [0,1]; one seed per example."""
    generator = torch.Generator().manual_seed(rng_seed)
    return (torch.randn(shape, generator=generator) / 20 + 0.5).clamp(0, 1)


def gray_image(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.full(shape, 0.5)


def invert(
    model: nn.Module,
    targets: torch.Tensor,
    x0: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    step_size: float | torch.Tensor,
    steps: int,
    constraint: str = "l2",
) -> dict[str, torch.Tensor]:
    """Eq. 4: from x0 (B,C,H,W), find x' with R(x') close to R(targets); all tensors (B, ...) on one device.

    Returns x', rep_dist ||R(x')-R(x_t)||, rep_dist_rel (/ ||R(x_t)||), pix_dist_target ||x'-x_t||,
    pix_dist_source ||x'-x0||, pred_class, loss_final and steps_taken.
    """
    model.eval()
    with torch.no_grad():
        target_rep = model.representation(targets)  # (B, D)
    result = pgd(inversion(model, target_rep), x0, eps=eps, step_size=step_size, steps=steps, constraint=constraint)
    with torch.no_grad():
        rep = model.representation(result.x)
        pred = model(result.x).argmax(1)
    rep_dist = (rep - target_rep).norm(dim=1)
    return {
        "x": result.x,
        "rep_dist": rep_dist,
        "rep_dist_rel": rep_dist / target_rep.norm(dim=1).clamp_min(1e-12),
        "pix_dist_target": (result.x - targets).flatten(1).norm(dim=1),
        "pix_dist_source": (result.x - x0).flatten(1).norm(dim=1),
        "pred_class": pred,
        "loss_final": result.loss,
        "steps_taken": result.steps_taken,
    }
