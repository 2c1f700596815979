"""regularized_visualize — Fig. 10's baseline: Eq. 5 on a *standard* model with the regularisation that feature
visualization needs there (each step sees the image randomly shifted by up to `jitter` pixels and rotated by up
to `max_degrees`), shown beside direct visualization (Eq. 5, no regularisation) of the robust model, which needs
none. Report: Fig. 10, one row per (start, coordinate), the models' direct and regularized images side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import pyarrow as pa
import torch

from robrep.core.config import Bounds
from robrep.fanout.job import COORDINATE, PGD_PARAMS, BatchContext, JobKind, Param, PGDBlockSpec
from robrep.fanout.kinds.common import MAX_ROWS, expand_coordinates, run_coordinates
from robrep.fanout.selection import CoordinateSpec
from robrep.objectives import regularized_visualization

MAX_DEGREES = 180.0


@dataclass(frozen=True)
class RegularizedVisualizeSpec(PGDBlockSpec):
    kind: Literal["regularized_visualize"] = "regularized_visualize"
    inits: tuple[Literal["noise", "gray", "image"], ...] = ("gray",)
    coordinates: CoordinateSpec = field(default_factory=CoordinateSpec)
    # pixels of random shift per step (the Lucid-style transformations of Fig. 10; 224 px: 8)
    jitter: Annotated[int, Bounds(0, 64, note="pixels")] = 8
    max_degrees: Annotated[float, Bounds(0, MAX_DEGREES)] = 10.0  # degrees of random rotation per step


def run(ctx: BatchContext, jobs) -> list[dict]:
    """One generator on the device, seeded by the batch's first job, draws every step's shifts and rotations."""
    first = jobs[0]
    generator = torch.Generator(device=ctx.device).manual_seed(first.rng_seed)

    def objective(model, coordinates):
        return regularized_visualization(model, coordinates, jitter=first.jitter, max_degrees=first.max_degrees,
                                         generator=generator)

    # A captured step would replay the first capture's shifts and rotations; this generator is not the device's own.
    return run_coordinates(ctx, jobs, objective, uncapturable="new random transforms from its own generator every "
                                                              "step")


def report(report, rows, lookup: dict, direct=None) -> None:
    if not report.section("Regularized vs direct visualization (Fig. 10)", rows, "regularized_visualize rows",
                          "add a {kind: regularized_visualize, models: [<standard>]} block beside a visualize block"):
        return
    direct = rows.iloc[0:0] if direct is None else direct
    keys = rows[["init", "source_index", "coordinate"]].drop_duplicates().head(MAX_ROWS)
    models = sorted(set(direct["model_id"]) | set(rows["model_id"]))
    columns = [(m, "direct", direct) for m in models]
    columns += [(m, "regularized", rows) for m in sorted(rows["model_id"].unique())]
    cells, labels = [], []
    for key in keys.itertuples():
        row = []
        for model_id, _, frame in columns:
            same = frame[(frame["model_id"] == model_id) & (frame["init"] == key.init)
                         & (frame["source_index"] == key.source_index) & (frame["coordinate"] == key.coordinate)]
            row.append(same["image_png"].iloc[0] if len(same) else None)
        cells.append(row)
        labels.append(f"{key.init} #{key.coordinate}")
    order = ", ".join(f"{m} {how}" for m, how, _ in columns)
    report.grid("fig10_regularized", cells, labels, [how for _, how, _ in columns],
                f"Fig. 10: the same coordinates maximised directly and with jitter and rotation; columns: {order}")


PARAMS = (*PGD_PARAMS, COORDINATE,
          Param("jitter", pa.int32(), 0, from_block=True, batch=True, later=True),  # pixels of shift per step
          Param("max_degrees", pa.float32(), 0.0, from_block=True, batch=True, later=True))  # degrees of rotation
KIND = JobKind("regularized_visualize", RegularizedVisualizeSpec, expand_coordinates, run, params=PARAMS,
               report=report, report_with=("visualize",), fake_relu=True)
