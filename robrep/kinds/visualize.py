"""visualize — Eq. 5: maximise one coordinate of R(x) through a fake ReLU (A.6.1), from gray, noise or a
test image. Report: Fig. 7, one row per start, one column per coordinate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from robrep.kinds.base import BatchContext, ExpandContext, Job, JobKind, PGDBlockSpec
from robrep.kinds.common import run_coordinates
from robrep.kinds.invert import slot_seed
from robrep.objectives import visualization
from robrep.selection import CoordinateSpec, select_coordinates


@dataclass(frozen=True)
class VisualizeSpec(PGDBlockSpec):
    kind: Literal["visualize"] = "visualize"
    inits: tuple[Literal["noise", "gray", "image"], ...] = ("noise", "image")
    coordinates: CoordinateSpec = field(default_factory=CoordinateSpec)


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


def run(ctx: BatchContext, jobs: list[Job]) -> list[dict]:
    return run_coordinates(ctx, jobs, visualization)


def report(report, rows, lookup: dict) -> None:
    from robrep.report import MAX_ROWS

    if not report.section("Feature visualization (Fig. 7)", rows, "visualize rows",
                          "add a {kind: visualize} block"):
        return
    for model_id, part in rows.groupby("model_id"):
        starts = part[["init", "source_index"]].drop_duplicates().head(MAX_ROWS)
        coords = sorted(part["coordinate"].unique())[:8]
        cells, labels = [], []
        for start in starts.itertuples():
            same = part[(part["init"] == start.init) & (part["source_index"] == start.source_index)]
            by_coord = dict(zip(same["coordinate"], same["image_png"], strict=True))
            seed = (lookup.get((same["dataset"].iloc[0], same["split"].iloc[0], int(start.source_index)))
                    if start.source_index >= 0 else None)
            cells.append([seed, *(by_coord.get(c) for c in coords)])
            labels.append(start.init)
        report.grid(f"fig7_visualize_{model_id}", cells, labels, ["start", *[f"#{c}" for c in coords]],
                    f"Fig. 7, {model_id}: each row maximises the columns' coordinates from the same start")


KIND = JobKind("visualize", VisualizeSpec, expand_coordinates, run, report=report)
