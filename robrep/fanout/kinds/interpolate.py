"""interpolate — Eq. 6 (A.5): invert lam R(x_1) + (1 - lam) R(x_2) for lam in {0, 1/T, ..., 1}, from the
pixel-space mix. Report: one strip of lam values per image pair (Fig. 12)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import pyarrow as pa
import torch

from robrep.core.config import Bounds
from robrep.fanout.job import PGD_PARAMS, BatchContext, ExpandContext, Job, JobKind, Param, PGDBlockSpec
from robrep.fanout.kinds.common import MAX_ROWS, BatchImages, run_inversion, slot_seed, target_representations
from robrep.fanout.selection import other_class_source
from robrep.objectives import interpolation_lams, interpolation_targets


@dataclass(frozen=True)
class InterpolateSpec(PGDBlockSpec):
    kind: Literal["interpolate"] = "interpolate"
    lam_steps: Annotated[int, Bounds(1, 1000)] = 4  # T of Eq. 6: lam takes the T + 1 values 0, 1/T, ..., 1


def expand(block: InterpolateSpec, ctx: ExpandContext) -> list[dict]:
    return [{"target_index": t, "source_index": other_class_source(ctx.labels, t, ctx.rng_seed), "init": "interp",
             "lam": float(lam), "rng_seed": slot_seed(ctx.rng_seed, t)}
            for t in ctx.indices for lam in interpolation_lams(block.lam_steps).tolist()]


def run(ctx: BatchContext, jobs: list[Job]) -> list[dict]:
    images = BatchImages(ctx, jobs)
    with torch.no_grad():
        source_rep = ctx.model.representation(images.stack([j.source_index for j in jobs]))
    target_rep = interpolation_targets(target_representations(ctx, images, jobs), source_rep,
                                       torch.tensor([j.lam for j in jobs]))
    return run_inversion(ctx, jobs, images, target_rep)


def report(report, rows, lookup: dict) -> None:
    if not report.section("Interpolation (Fig. 12)", rows, "interpolate rows",
                          "add a {kind: interpolate} block"):
        return
    cells, labels, lams = [], [], []
    for (model_id, target), strip in rows.groupby(["model_id", "target_index"]):
        strip = strip.sort_values("lam")
        cells.append(list(strip["image_png"]))
        labels.append(f"{model_id[:14]} t={target}")
        lams = [f"{v:.2f}" for v in strip["lam"]]
        if len(cells) >= 2 * MAX_ROWS:
            break
    report.grid("fig12_interpolate", cells, labels, lams,
                "Fig. 12: inverting lambda R(x1) + (1 - lambda) R(x2); lambda = 0 is the other image")


LAM = Param("lam", pa.float32(), math.nan)  # of Eq. 6: the target is lam R(x_t) + (1 - lam) R(x_s)

KIND = JobKind("interpolate", InterpolateSpec, expand, run, params=(*PGD_PARAMS, LAM), report=report, tunable=True,
               judged=True)
