"""pairs — Sec. 2 (Eq. 1): a standard model's representation of one image matched from another image of a
different class, unconstrained. Report: target, source and result side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from robrep.fanout.job import PGD_PARAMS, ExpandContext, JobKind, PGDBlockSpec
from robrep.fanout.kinds.common import MAX_ROWS, run_towards_targets, slot_seed
from robrep.fanout.selection import other_class_source


@dataclass(frozen=True)
class PairsSpec(PGDBlockSpec):
    kind: Literal["pairs"] = "pairs"


def expand(block: PairsSpec, ctx: ExpandContext) -> list[dict]:
    return [{"target_index": t, "source_index": other_class_source(ctx.labels, t, ctx.rng_seed), "init": "image",
             "rng_seed": slot_seed(ctx.rng_seed, t)} for t in ctx.indices]



def report(report, rows, lookup: dict) -> None:
    if not report.section("Pairs: one representation, two images (Sec. 2)", rows, "pairs rows",
                          "add a {kind: pairs} block"):
        return
    for model_id, part in rows.groupby("model_id"):
        part = part.sort_values("target_index").head(MAX_ROWS)
        cells = [[lookup.get((r.dataset, r.split, int(r.target_index))),
                  lookup.get((r.dataset, r.split, int(r.source_index))), r.image_png]
                 for r in part.itertuples()]
        labels = [f"{r.rep_dist_rel:.2f}" for r in part.itertuples()]
        report.grid(f"sec2_pairs_{model_id}", cells, labels, ["target", "source", "result"],
                    f"Sec. 2, {model_id}: the result matches the target's representation (rep_dist_rel on the left) "
                    "while it stays near the source in pixels")


KIND = JobKind("pairs", PairsSpec, expand, run_towards_targets, params=PGD_PARAMS, report=report, tunable=True,
               judged=True)
