"""representations — R(x) of every image of the split, one row per image (index, label, representation),
written to the `representations` table: the input of top_activating, and a table to analyse on its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from robrep.fanout.job import BatchContext, BlockSpec, ExpandContext, Job, JobKind


@dataclass(frozen=True)
class RepresentationsSpec(BlockSpec):
    kind: Literal["representations"] = "representations"


def expand(block: RepresentationsSpec, ctx: ExpandContext) -> list[dict]:
    return [{}]  # one job per model: the whole split


def run(ctx: BatchContext, jobs: list[Job]) -> list[dict]:
    reps, labels = ctx.split_representations()
    return [{"job_id": job.job_id, "model_id": job.model_id, "dataset": job.dataset, "split": job.split,
             "index": i, "label": int(labels[i]), "representation": reps[i].tolist()}
            for job in jobs for i in range(len(reps))]


KIND = JobKind("representations", RepresentationsSpec, expand, run, table="representations")
