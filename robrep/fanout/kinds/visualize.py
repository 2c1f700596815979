"""visualize — Eq. 5: maximise one coordinate of R(x) through a fake ReLU (A.6.1), from gray, noise or a
test image. Report: Fig. 7, one row per start, one column per coordinate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from robrep.fanout.job import COORDINATE, PGD_PARAMS, BatchContext, Job, JobKind, PGDBlockSpec
from robrep.fanout.kinds.common import MAX_ROWS, expand_coordinates, run_coordinates
from robrep.fanout.selection import CoordinateSpec
from robrep.objectives import visualization


@dataclass(frozen=True)
class VisualizeSpec(PGDBlockSpec):
    kind: Literal["visualize"] = "visualize"
    inits: tuple[Literal["noise", "gray", "image"], ...] = ("noise", "image")
    coordinates: CoordinateSpec = field(default_factory=CoordinateSpec)


def run(ctx: BatchContext, jobs: list[Job]) -> list[dict]:
    return run_coordinates(ctx, jobs, visualization)


def report(report, rows, lookup: dict) -> None:
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


KIND = JobKind("visualize", VisualizeSpec, expand_coordinates, run, params=(*PGD_PARAMS, COORDINATE), report=report,
               fake_relu=True)
