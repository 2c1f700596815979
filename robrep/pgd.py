"""Projected gradient descent over the input: the one engine behind attacks, training and every
representation experiment. Every objective is a per-example loss that PGD *minimises*.

Cost: each step is one forward and one input-gradient backward; one extra no-grad forward at the end
measures the loss of the returned iterate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) -> (B,)
CONSTRAINTS = ("l2",)


@dataclass
class PGDResult:
    x: torch.Tensor  # (B, C, H, W) final iterate, in [0,1]
    loss: torch.Tensor  # (B,) loss at x
    steps_taken: torch.Tensor  # (B,) int64


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, 1, 1, 1) L2 norm, broadcastable back."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def l2_step(x: torch.Tensor, grad: torch.Tensor, step_size: torch.Tensor) -> torch.Tensor:
    """Descend along the L2-normalised gradient: ||x_new - x|| = step_size (before projection)."""
    return x - step_size * grad / _per_example_norm(grad)


def l2_project(x: torch.Tensor, center: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Project x onto the L2 ball of radius eps (B,1,1,1) around center, then onto [0,1]."""
    delta = x - center
    delta = delta * torch.clamp(eps / _per_example_norm(delta), max=1.0)
    return (center + delta).clamp(0.0, 1.0)


def l2_random_start(center: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform point in the L2 ball around center (direction ~ Gaussian, radius ~ eps * U^(1/d))."""
    noise = torch.randn(center.shape, generator=generator, device=center.device, dtype=center.dtype)
    d = center[0].numel()
    u = torch.rand((center.shape[0],), generator=generator, device=center.device, dtype=center.dtype)
    radius = eps * u.pow(1.0 / d).view_as(eps)
    return (center + radius * noise / _per_example_norm(noise)).clamp(0.0, 1.0)


def _as_column(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Scalar or (B,) -> (B, 1, 1, 1) on like's device."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.expand(like.shape[0]).reshape(-1, *([1] * (like.dim() - 1)))


def pgd(
    loss_fn: LossFn,
    x0: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    step_size: float | torch.Tensor,
    steps: int,
    constraint: str = "l2",
    center: torch.Tensor | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> PGDResult:
    """Minimise loss_fn from x0 within ||x - center||_2 <= eps (center defaults to x0); pixels in [0,1].

    eps, step_size: [0,1]-pixel L2 units, scalar or (B,).
    """
    if constraint not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {constraint!r}; known: {CONSTRAINTS}")
    center = x0.detach() if center is None else center.detach()
    eps_c, step_c = _as_column(eps, x0), _as_column(step_size, x0)
    x = l2_random_start(center, eps_c, generator) if random_start else x0.detach().clone()
    x = l2_project(x, center, eps_c)
    for _ in range(steps):
        x.requires_grad_(True)
        loss = loss_fn(x)  # (B,)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            x = l2_project(l2_step(x, grad, step_c), center, eps_c)
    with torch.no_grad():
        final_loss = loss_fn(x)
    steps_taken = torch.full((x0.shape[0],), steps, dtype=torch.int64, device=x0.device)
    return PGDResult(x=x.detach(), loss=final_loss.detach(), steps_taken=steps_taken)
