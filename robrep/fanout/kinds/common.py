"""What several kinds share: gather a batch's images, build its starts, run one batched PGD loop, make rows, seed
an image slot, expand coordinates."""

from __future__ import annotations

import math

import pandas as pd
import torch

from robrep.experiments import measure, noise_image
from robrep.fanout.job import BatchContext, ExpandContext, Job
from robrep.fanout.selection import select_coordinates
from robrep.images import encode_png
from robrep.objectives import inversion
from robrep.pgd import PGDResult, pgd, warn_once

MAX_ROWS = 6  # figure rows per model, in every kind's report section


class BatchImages:
    """The dataset images a batch refers to (targets and sources), by index, on the device (one copy), with their
    labels."""

    def __init__(self, ctx: BatchContext, jobs: list[Job]):
        needed = sorted({i for j in jobs for i in (j.target_index, j.source_index) if i >= 0})
        images, labels = ctx.get_images(needed) if needed else (torch.empty(0), torch.empty(0, dtype=torch.long))
        images = images.to(ctx.device)
        self.by_index = {i: images[n] for n, i in enumerate(needed)}
        self.label_of = {i: int(labels[n]) for n, i in enumerate(needed)}
        self.shape = tuple(images.shape[1:]) if needed else tuple(jobs[0].image_shape)
        self.device = ctx.device

    def stack(self, indices: list[int]) -> torch.Tensor:
        return torch.stack([self.by_index[i] for i in indices])

    def starts(self, jobs: list[Job]) -> torch.Tensor:
        """x0 per job on the device: noise (drawn there, seeded per job), gray, the source image, or the pixel-space
        mix for interpolation."""
        starts = []
        for job in jobs:
            if job.init == "noise":
                starts.append(noise_image(self.shape, job.rng_seed, self.device))
            elif job.init == "gray":
                starts.append(torch.full(self.shape, 0.5, device=self.device))
            elif job.init == "interp":
                target, source = self.by_index[job.target_index], self.by_index[job.source_index]
                starts.append(job.lam * target + (1 - job.lam) * source)
            else:
                starts.append(self.by_index[job.source_index])
        return torch.stack(starts)


def run_pgd(ctx: BatchContext, jobs: list[Job], loss_fn, x0: torch.Tensor, stop_fn=None, uncapturable: str = ""
            ) -> PGDResult:
    """One batched PGD loop with the batch's shared settings and each job's own eps; the ball is around x0. Its
    step is replayed as a CUDA graph where the fast model says so (FastModel.capture), unless the kind says why
    its step cannot be (`uncapturable`): then one logged line per process, and the steps run eagerly."""
    first = jobs[0]
    eps = torch.tensor([j.eps for j in jobs], device=ctx.device)
    capture = ctx.fast.capture
    if capture and uncapturable:
        warn_once(f"PGD: {first.kind} is not captured as a CUDA graph ({uncapturable}); its steps run eagerly")
        capture = False
    return pgd(loss_fn, x0, center=x0, eps=eps, step_size=first.step_size, steps=first.steps,
               constraint=first.constraint, stop_fn=stop_fn, capture=capture)


def run_inversion(ctx: BatchContext, jobs: list[Job], images: BatchImages, target_rep: torch.Tensor
                  ) -> list[dict]:
    """Eq. 4 towards target_rep (B, D) from each job's start; pixel distances to each job's target image."""
    x0 = images.starts(jobs)
    targets = images.stack([j.target_index for j in jobs])
    result = run_pgd(ctx, jobs, inversion(ctx.fast, target_rep), x0)
    out = measure(ctx.model, result, x0, targets, target_rep)
    return [result_row(job, out, i, images.label_of) for i, job in enumerate(jobs)]


def target_representations(ctx: BatchContext, images: BatchImages, jobs: list[Job]) -> torch.Tensor:
    with torch.no_grad():
        return ctx.model.representation(images.stack([j.target_index for j in jobs]))


def run_towards_targets(ctx: BatchContext, jobs: list[Job]) -> list[dict]:
    """Eq. 4 towards each job's target image's representation (invert, invert_sweep, pairs)."""
    images = BatchImages(ctx, jobs)
    return run_inversion(ctx, jobs, images, target_representations(ctx, images, jobs))


def resolve_coordinates(ctx: BatchContext, jobs: list[Job], x0: torch.Tensor) -> torch.Tensor:
    """Job coordinates (B,); a negative one, -1-r, means the r-th most active coordinate of R(x0)."""
    coords = torch.tensor([job.coordinate for job in jobs])
    if (coords < 0).any():
        with torch.no_grad():
            order = ctx.model.representation(x0).argsort(dim=1, descending=True).cpu()
        rank = (-1 - coords).clamp(min=0)
        coords = torch.where(coords < 0, order[torch.arange(len(jobs)), rank], coords)
    return coords.to(ctx.device)


def run_coordinates(ctx: BatchContext, jobs: list[Job], objective_for, stop: bool = False, uncapturable: str = ""
                    ) -> list[dict]:
    """A coordinate objective (visualize, manipulate): objective_for(model, coordinates (B,)) is the loss;
    stop=True uses its `done` as PGD's early stop. Rows carry the coordinate's activation and rank. uncapturable:
    see run_pgd."""
    images = BatchImages(ctx, jobs)
    x0 = images.starts(jobs)
    coords = resolve_coordinates(ctx, jobs, x0)
    objective = objective_for(ctx.fast, coords)
    result = run_pgd(ctx, jobs, objective, x0, stop_fn=objective.done if stop else None, uncapturable=uncapturable)
    out = measure(ctx.model, result, x0, None, None)
    return [result_row(job, out, i, images.label_of, int(coords[i])) for i, job in enumerate(jobs)]


def result_row(job: Job, out: dict, i: int, label_of: dict[int, int], coordinate: int = -1) -> dict:
    """One results row: the job's columns, the measurements of example i, and the coordinate's activation."""
    rep = out["representation"][i]
    row = job.columns()
    row.update(
        target_class=label_of.get(job.target_index, -1), source_class=label_of.get(job.source_index, -1),
        image_png=encode_png(out["x"][i]), representation=rep.float().cpu().tolist() if job.store_representation
        else None, pred_class=int(out["pred_class"][i]), steps_taken=int(out["steps_taken"][i]),
    )
    for key in ("rep_dist", "rep_dist_rel", "pix_dist_target", "pix_dist_source", "loss_final"):
        row[key] = float(out[key][i]) if key in out else math.nan
    if coordinate >= 0:
        row.update(coordinate=coordinate, activation=float(rep[coordinate]),
                   activation_rank=int((rep > rep[coordinate]).sum()))
    return row


def slot_seed(fanout_seed: int, index: int) -> int:
    """The rng_seed of image slot `index` (its noise start), derived from fanout.rng_seed."""
    return fanout_seed * 1_000_003 + index


def expand_coordinates(block, ctx: ExpandContext) -> list[dict]:
    """One job per (start, coordinate); a gray start is the same for every image, so it is used once."""
    coordinates = select_coordinates(block.coordinates, ctx.representation_dim)
    jobs = []
    for t in ctx.indices:
        for init in block.inits:
            if init == "gray" and t != ctx.indices[0]:
                continue
            jobs += [{"source_index": t if init == "image" else -1, "init": init, "coordinate": c,
                      "rng_seed": slot_seed(ctx.rng_seed, t)} for c in coordinates]
    return jobs


def judged_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows a judge labelled (judge_pred >= 0) that have a target class."""
    if "judge_pred" not in rows.columns:
        return rows.iloc[0:0]
    return rows[(rows["judge_pred"].fillna(-1) >= 0) & (rows["target_class"] >= 0)]


def judged_as_target(rows: pd.DataFrame) -> float:
    """The fraction of judged rows whose judge labels the image as the target's class (NaN: none judged)."""
    judged = judged_rows(rows)
    return float((judged["judge_pred"] == judged["target_class"]).mean()) if len(judged) else float("nan")


def judge_of(rows: pd.DataFrame) -> str | None:
    judged = judged_rows(rows)
    return ",".join(sorted(judged["judge_model_id"].dropna().unique())) or None if len(judged) else None


def in_distribution(results: pd.DataFrame) -> pd.DataFrame:
    """The rows on the models' own dataset (each row's in_distribution, recorded by the plan: False for a kind's
    other dataset, such as invert's targets_from, whose classes the models and the judge do not know; for rows from
    before the column, robrep.store.load_results says). Rows built in memory without it: all of them."""
    if results.empty or "in_distribution" not in results.columns:
        return results
    return results[results["in_distribution"].astype(bool)]
