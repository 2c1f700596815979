"""The building blocks of representation experiments: the paper's noise start, the
measurements every result row carries, R(x) of a whole split, and the problems jobs.tune searches over.
The fan-out's job kinds (robrep/fanout/kinds/) are built from these."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robrep.objectives import inversion

GetImages = Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]  # indices -> (x (B,C,H,W) in [0,1], y (B,))


def noise_image(shape: tuple[int, ...], rng_seed: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The paper's noise start (A.6 notebooks): randn/20 + 0.5, clamped to [0,1]; one seed per example, drawn by a
    generator on `device` (so the same seed gives the same image on every device of one type)."""
    generator = torch.Generator(device=device).manual_seed(rng_seed)
    return (torch.randn(shape, generator=generator, device=device) / 20 + 0.5).clamp(0, 1)


def measure(model, result, x0, targets, target_rep) -> dict[str, torch.Tensor]:
    """x', R(x') distances to target_rep, pixel distances to targets and x0, prediction, loss, steps."""
    with torch.no_grad():
        rep = model.representation(result.x)
        pred = model(result.x).argmax(1)
    out = {"x": result.x, "representation": rep, "pred_class": pred, "loss_final": result.loss,
           "steps_taken": result.steps_taken, "pix_dist_source": (result.x - x0).flatten(1).norm(dim=1)}
    if target_rep is not None:
        rep_dist = (rep - target_rep).norm(dim=1)
        out.update(rep_dist=rep_dist, rep_dist_rel=rep_dist / target_rep.norm(dim=1).clamp_min(1e-12))
    if targets is not None:
        out["pix_dist_target"] = (result.x - targets).flatten(1).norm(dim=1)
    return out


def split_representations(model: nn.Module, get_images: GetImages, size: int, device: str,
                          batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """R(x) of every image of a split, in index order: ((N, D) on cpu, (N,) labels)."""
    model.eval()
    reps, labels = [], []
    for start in range(0, size, batch_size):
        x, y = get_images(list(range(start, min(size, start + batch_size))))
        with torch.no_grad():
            reps.append(model.representation(x.to(device)).cpu())
        labels.append(y)
    return torch.cat(reps), torch.cat(labels)


def tuning_problem(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, objective: str, rng_seed: int = 0,
                   fast: nn.Module | None = None):
    """(loss_fn, x0, measure) for tuning PGD: `measure(x)` is the number to minimise. The loss runs on `fast`
    (default `model`; e.g. a robrep.fast.FastModel), the measure on `model` in fp32. images and labels are on the
    model's device.

    inversion: Eq. 4 from the paper's noise start towards each image; measure = mean rep_dist_rel.
    attack: untargeted CE from the image itself; measure = accuracy on x (lower = stronger attack).
    """
    from robrep.objectives import inversion_loss, untargeted_attack

    model.eval()
    fast = model if fast is None else fast
    if objective == "inversion":
        with torch.no_grad():
            target_rep = model.representation(images)
        x0 = torch.stack([noise_image(tuple(images.shape[1:]), rng_seed + i, images.device)
                          for i in range(len(images))])

        def measure(x: torch.Tensor) -> float:
            with torch.no_grad():
                return float(inversion_loss(model.representation(x), target_rep).mean())

        return inversion(fast, target_rep), x0, measure
    if objective == "attack":
        def accuracy(x: torch.Tensor) -> float:
            with torch.no_grad():
                return float((model(x).argmax(1) == labels).float().mean())

        return untargeted_attack(fast, labels), images.clone(), accuracy
    raise ValueError(f"unknown tuning objective {objective!r}; use inversion or attack")
