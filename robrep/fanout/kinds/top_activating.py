"""top_activating — Fig. 8: for each coordinate of R, the k most and k least activating images of the
split (2k rows per job; `split_rank` is the image's place in the split sorted by that activation).
Its jobs rely on a `representations` job per model, which stores R(x) of the whole split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import pyarrow as pa

from robrep.core.config import Bounds
from robrep.core.errors import ConfigError
from robrep.fanout.job import COORDINATE, BatchContext, BlockSpec, ExpandContext, Job, JobKind, Param
from robrep.fanout.kinds.representations import RepresentationsSpec
from robrep.fanout.selection import CoordinateSpec, select_coordinates
from robrep.images import encode_png

MAX_IMAGES_PER_END = 1000


@dataclass(frozen=True)
class TopActivatingSpec(BlockSpec):
    kind: Literal["top_activating"] = "top_activating"
    coordinates: CoordinateSpec = field(default_factory=CoordinateSpec)  # list or random (ranked over the split)
    # the k most and the k least activating images per coordinate
    images_per_end: Annotated[int, Bounds(1, MAX_IMAGES_PER_END)] = 3

    def validate(self) -> None:
        if self.coordinates.mode == "top":
            raise ConfigError("fanout.jobs top_activating ranks images for given coordinates: use coordinates mode "
                              "list or random")


def expand(block: TopActivatingSpec, ctx: ExpandContext) -> list[dict]:
    return [{"coordinate": c, "images_per_end": block.images_per_end}
            for c in select_coordinates(block.coordinates, ctx.representation_dim)]


def needs(block: TopActivatingSpec) -> list[BlockSpec]:
    return [RepresentationsSpec(models=block.models)]


def run(ctx: BatchContext, jobs: list[Job]) -> list[dict]:
    reps, labels = ctx.split_representations()
    n, rows = len(reps), []
    for job in jobs:
        coord, k = job.coordinate, min(job.images_per_end, n)
        order = reps[:, coord].argsort(descending=True)
        picks = [(int(order[r]), r) for r in range(k)] + [(int(order[n - 1 - r]), n - 1 - r) for r in range(k)]
        x, _ = ctx.get_images([i for i, _ in picks])
        for (index, split_rank), image in zip(picks, x, strict=True):
            rep = reps[index]
            row = job.columns()
            row.update(
                target_index=index, target_class=int(labels[index]), source_class=-1, split_rank=split_rank,
                activation=float(rep[coord]), activation_rank=int((rep > rep[coord]).sum()),
                image_png=encode_png(image), pred_class=-1, steps_taken=0,
                representation=rep.tolist() if job.store_representation else None,
            )
            rows.append(row)
    return rows


def report(report, rows, lookup: dict) -> None:
    if not report.section("Most and least activating images (Fig. 8)", rows, "top_activating rows",
                          "add a {kind: top_activating} block"):
        return
    for model_id, part in rows.groupby("model_id"):
        cells, labels = [], []
        for coordinate, same in part.groupby("coordinate"):
            cells.append(list(same.sort_values("split_rank")["image_png"]))
            labels.append(f"#{coordinate}")
        k = len(cells[0]) // 2
        report.grid(f"fig8_top_{model_id}", cells, labels, [*(["top"] * k), *(["bottom"] * k)],
                    f"Fig. 8, {model_id}: the {k} most (left) and {k} least (right) activating test images")


IMAGES_PER_END = Param("images_per_end", pa.int32(), 0)  # k: the k most and k least activating images
KIND = JobKind("top_activating", TopActivatingSpec, expand, run, params=(COORDINATE, IMAGES_PER_END), report=report,
               needs=needs)
