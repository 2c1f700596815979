"""Batched representation experiments: every fan-out job kind as one batched PGD loop (or one pass, for
top_activating), returning one result row per image for the store (DESIGN §3).

A job is a plain dict (see jobs/fanout.py). A batch holds jobs of one kind and one model with the same
PGD settings. Images come from `get_images(indices) -> (x (B,C,H,W) in [0,1], labels (B,))`, provided by
the caller, so this module never touches files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from robrep.objectives import Manipulation, interpolation_targets, inversion, visualization
from robrep.pgd import pgd
from robrep.store import encode_png

GetImages = Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]
# The keys that define a job: its job_id is their hash.
JOB_KEYS = (
    "kind", "model_id", "dataset", "split", "target_index", "source_index", "init", "rng_seed",
    "constraint", "eps", "step_size", "steps", "coordinate", "lam",
)


def noise_image(shape: tuple[int, ...], rng_seed: int) -> torch.Tensor:
    """The paper's noise start (A.6 notebooks): randn/20 + 0.5, clamped to [0,1]; one seed per example."""
    generator = torch.Generator().manual_seed(rng_seed)
    return (torch.randn(shape, generator=generator) / 20 + 0.5).clamp(0, 1)


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
    """Eq. 4 from x0 (B,C,H,W) towards R(targets); see `_measure` for what it returns."""
    model.eval()
    with torch.no_grad():
        target_rep = model.representation(targets)
    result = pgd(inversion(model, target_rep), x0, eps=eps, step_size=step_size, steps=steps, constraint=constraint)
    return _measure(model, result, x0, targets, target_rep)


def _measure(model, result, x0, targets, target_rep) -> dict[str, torch.Tensor]:
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


def _starts(jobs: list[dict], images: dict[int, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """x0 per job: noise (seeded), gray, the source image, or the pixel-space mix for interpolation."""
    starts = []
    for job in jobs:
        if job["init"] == "noise":
            starts.append(noise_image(shape, job["rng_seed"]))
        elif job["init"] == "gray":
            starts.append(torch.full(shape, 0.5))
        elif job["init"] == "interp":
            lam = job["lam"]
            starts.append(lam * images[job["target_index"]] + (1 - lam) * images[job["source_index"]])
        else:
            starts.append(images[job["source_index"]])
    return torch.stack(starts)


def _resolve_coordinates(model, jobs, x0) -> torch.Tensor:
    """Job coordinates; a negative one, -1-r, means the r-th most active coordinate of R(x0)."""
    coords = torch.tensor([job["coordinate"] for job in jobs])
    if (coords < 0).any():
        with torch.no_grad():
            order = model.representation(x0).argsort(dim=1, descending=True)
        rank = (-1 - coords).clamp(min=0)
        coords = torch.where(coords < 0, order[torch.arange(len(jobs)), rank], coords)
    return coords


def run_pgd_batch(model: nn.Module, jobs: list[dict], get_images: GetImages, device: str) -> list[dict]:
    """invert, invert_sweep, pairs, interpolate, visualize, manipulate: one batched PGD loop."""
    kind, first = jobs[0]["kind"], jobs[0]
    needed = sorted({i for j in jobs for i in (j["target_index"], j["source_index"]) if i >= 0})
    images, labels = get_images(needed) if needed else (torch.empty(0), torch.empty(0, dtype=torch.long))
    by_index = {i: images[n] for n, i in enumerate(needed)}
    label_of = {i: int(labels[n]) for n, i in enumerate(needed)}
    shape = tuple(images.shape[1:]) if needed else tuple(first["image_shape"])
    x0 = _starts(jobs, by_index, shape).to(device)
    center = x0
    eps = torch.tensor([j["eps"] for j in jobs], device=device)
    settings = {"eps": eps, "step_size": first["step_size"], "steps": first["steps"], "constraint": first["constraint"]}
    model.eval()
    coords = torch.full((len(jobs),), -1)
    if kind in ("invert", "invert_sweep", "pairs", "interpolate"):
        targets = torch.stack([by_index[j["target_index"]] for j in jobs]).to(device)
        with torch.no_grad():
            target_rep = model.representation(targets)
            if kind == "interpolate":  # Eq. 6: lam R(x_1) + (1 - lam) R(x_2)
                source_rep = model.representation(torch.stack([by_index[j["source_index"]] for j in jobs]).to(device))
                target_rep = interpolation_targets(target_rep, source_rep, torch.tensor([j["lam"] for j in jobs]))
        result = pgd(inversion(model, target_rep), x0, center=center, **settings)
        out = _measure(model, result, x0, targets, target_rep)
    else:  # visualize, manipulate
        coords = _resolve_coordinates(model, jobs, x0).to(device)
        if kind == "manipulate":
            objective = Manipulation(model, coords)
            result = pgd(objective, x0, center=center, stop_fn=objective.done, **settings)
        else:
            result = pgd(visualization(model, coords), x0, center=center, **settings)
        out = _measure(model, result, x0, None, None)
    rows = []
    for i, job in enumerate(jobs):
        rep = out["representation"][i]
        coord = int(coords[i])
        row = _row(job, out, i, label_of)
        if coord >= 0:
            row.update(coordinate=coord, activation=float(rep[coord]),
                       activation_rank=int((rep > rep[coord]).sum()))
        rows.append(row)
    return rows


def _row(job: dict, out: dict, i: int, label_of: dict[int, int]) -> dict:
    row = {k: job[k] for k in (*JOB_KEYS, "job_id", "model_robust", "model_eps")}
    row.update(
        target_class=label_of.get(job["target_index"], -1), source_class=label_of.get(job["source_index"], -1),
        image_png=encode_png(out["x"][i]),
        representation=out["representation"][i].float().cpu().tolist() if job.get("store_representation") else None,
    )
    for key in ("rep_dist", "rep_dist_rel", "pix_dist_target", "pix_dist_source", "loss_final"):
        row[key] = float(out[key][i]) if key in out else math.nan
    for key in ("pred_class", "steps_taken"):
        row[key] = int(out[key][i])
    return row


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


def representation_rows(job: dict, reps: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """One row per image of the split: its index, label and R(x) (the `representations` table)."""
    return [{"job_id": job["job_id"], "model_id": job["model_id"], "dataset": job["dataset"], "split": job["split"],
             "index": i, "label": int(labels[i]), "representation": reps[i].tolist()} for i in range(len(reps))]


def run_top_activating(jobs: list[dict], reps: torch.Tensor, labels: torch.Tensor, get_images: GetImages) -> list[dict]:
    """Fig. 8: per coordinate, the k most and k least activating images of the split (2k rows per job).
    `split_rank` is the image's place in the split sorted by that activation (0 = most activating)."""
    rows = []
    n = len(reps)
    for job in jobs:
        coord, k = job["coordinate"], min(job["k"], n)
        order = reps[:, coord].argsort(descending=True)
        picks = [(int(order[r]), r) for r in range(k)] + [(int(order[n - 1 - r]), n - 1 - r) for r in range(k)]
        x, _ = get_images([i for i, _ in picks])
        for (index, split_rank), image in zip(picks, x, strict=True):
            rep = reps[index]
            row = {key: job[key] for key in (*JOB_KEYS, "job_id", "model_robust", "model_eps")}
            row.update(
                target_index=index, target_class=int(labels[index]), source_class=-1, split_rank=split_rank,
                activation=float(rep[coord]), activation_rank=int((rep > rep[coord]).sum()),
                image_png=encode_png(image), pred_class=-1, steps_taken=0,
                representation=rep.tolist() if job.get("store_representation") else None,
            )
            rows.append(row)
    return rows


def timed_rows(fn, *args) -> list[dict]:
    """Run a batch function and stamp each row with its share of the batch's seconds."""
    start = time.time()
    rows = fn(*args)
    for row in rows:
        row["seconds"] = (time.time() - start) / max(1, len(rows))
    return rows


def tuning_problem(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, objective: str, rng_seed: int = 0):
    """(loss_fn, x0, measure) for tuning PGD: `measure(x)` is the number to minimise.

    inversion: Eq. 4 from the paper's noise start towards each image; measure = mean rep_dist_rel.
    attack: untargeted CE from the image itself; measure = accuracy on x (lower = stronger attack).
    """
    from robrep.objectives import inversion_loss, untargeted_attack

    model.eval()
    if objective == "inversion":
        with torch.no_grad():
            target_rep = model.representation(images)
        x0 = torch.stack([noise_image(tuple(images.shape[1:]), rng_seed + i) for i in range(len(images))])

        def measure(x: torch.Tensor) -> float:
            with torch.no_grad():
                return float(inversion_loss(model.representation(x), target_rep).mean())

        return inversion(model, target_rep), x0, measure
    if objective == "attack":
        def accuracy(x: torch.Tensor) -> float:
            with torch.no_grad():
                return float((model(x).argmax(1) == labels).float().mean())

        return untargeted_attack(model, labels), images.clone(), accuracy
    raise ValueError(f"unknown tuning objective {objective!r}; use inversion or attack")
