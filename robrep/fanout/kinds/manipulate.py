"""manipulate — Sec. 4.2.1: Eq. 5 from a test image, stopped as soon as the coordinate exceeds every other
one; steps_taken records when. Report: Fig. 11, the original beside each model's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from robrep.fanout.job import COORDINATE, PGD_PARAMS, BatchContext, Job, JobKind, PGDBlockSpec
from robrep.fanout.kinds.common import MAX_ROWS, expand_coordinates, run_coordinates
from robrep.fanout.selection import CoordinateSpec
from robrep.objectives import Manipulation


@dataclass(frozen=True)
class ManipulateSpec(PGDBlockSpec):
    kind: Literal["manipulate"] = "manipulate"
    inits: tuple[Literal["image"], ...] = ("image",)  # manipulation starts from test images
    coordinates: CoordinateSpec = field(default_factory=CoordinateSpec)


def run(ctx: BatchContext, jobs: list[Job]) -> list[dict]:
    return run_coordinates(ctx, jobs, Manipulation, stop=True)


def report(report, rows, lookup: dict) -> None:
    if not report.section("Feature manipulation (Fig. 11)", rows, "manipulate rows",
                          "add a {kind: manipulate} block"):
        return
    models = sorted(rows["model_id"].unique())
    pairs = rows[["source_index", "coordinate"]].drop_duplicates().head(MAX_ROWS)
    cells, labels = [], []
    for pair in pairs.itertuples():
        same = rows[(rows["source_index"] == pair.source_index) & (rows["coordinate"] == pair.coordinate)]
        by_model = same.set_index("model_id")
        cells.append([lookup.get((same["dataset"].iloc[0], same["split"].iloc[0], int(pair.source_index))),
                      *(by_model.loc[m, "image_png"] if m in by_model.index else None for m in models)])
        steps = ", ".join(f"{m}: {int(by_model.loc[m, 'steps_taken'])}" for m in models if m in by_model.index)
        labels.append(f"#{pair.coordinate}")
        report.text(f"image {pair.source_index}, coordinate {pair.coordinate}: steps before the stop rule — {steps}")
    report.grid("fig11_manipulate", cells, labels, ["original", *models],
                "Fig. 11: the feature added until it exceeds every other coordinate")


KIND = JobKind("manipulate", ManipulateSpec, expand_coordinates, run, params=(*PGD_PARAMS, COORDINATE), report=report,
               fake_relu=True)
