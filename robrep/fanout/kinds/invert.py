"""invert — Eq. 4: match R(x) to a test image's R(x_t), from noise, gray, or an image of another class.
Report: Fig. 3 (from another class's image) and Fig. 6 (from noise), robust beside standard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd

from robrep.core.names import check_name
from robrep.fanout.job import PGD_PARAMS, ExpandContext, JobKind, PGDBlockSpec
from robrep.fanout.kinds.common import (
    MAX_ROWS,
    in_distribution,
    judge_of,
    judged_as_target,
    run_towards_targets,
    slot_seed,
)
from robrep.fanout.selection import other_class_source


@dataclass(frozen=True)
class InvertSpec(PGDBlockSpec):
    kind: Literal["invert"] = "invert"
    inits: tuple[Literal["noise", "gray", "image"], ...] = ("noise", "image")
    # Out-of-distribution inversion (Fig. 6, right): the targets (and image starts) come from <data.dir>/<name>.beton
    # instead of the fan-out's split; its classes need not be the model's. "glyphs" (shapes and letters) is built in.
    targets_from: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.targets_from is not None:
            check_name(self.targets_from, "fanout.jobs invert.targets_from")


def expand(block: InvertSpec, ctx: ExpandContext) -> list[dict]:
    return [{"target_index": t, "init": init, "rng_seed": slot_seed(ctx.rng_seed, t),
             "source_index": other_class_source(ctx.labels, t, ctx.rng_seed) if init == "image" else -1}
            for t in ctx.indices for init in block.inits]



def report(report, rows, lookup: dict) -> None:
    inside = in_distribution(rows)  # the models' own dataset; the rest came from targets_from
    models = sorted(rows["model_id"].unique())
    for dataset, outside in rows.drop(inside.index).groupby("dataset"):
        report.heading(f"Inverting images from outside the training distribution: {dataset} (Fig. 6, right)")
        report_outside(report, outside, lookup, models, dataset)
    if not inside.empty or rows.empty:
        _report_inside(report, inside, lookup, models, MAX_ROWS)


def _report_inside(report, rows, lookup: dict, models: list[str], max_rows: int) -> None:
    if not report.section("Inversion: robust vs standard (Fig. 3 and 6)", rows, "invert rows",
                          "add a {kind: invert} block to fanout.jobs"):
        return
    main = rows["dataset"].iloc[0] if "dataset" in rows.columns else None
    for init, caption in (("image", "Fig. 3: from a test image of another class"), ("noise", "Fig. 6: from noise")):
        part = rows[rows["init"] == init]
        targets = sorted(part["target_index"].unique())[:max_rows]
        if not targets:
            report.missing_section(f"invert rows from init={init}", f"add {init} to the invert block's inits")
            continue
        cells, labels = [], []
        for t in targets:
            by_model = part[part["target_index"] == t].set_index("model_id")
            split, source = by_model["split"].iloc[0], int(by_model["source_index"].iloc[0])
            row = [lookup.get((main, split, int(t))), lookup.get((main, split, source)) if source >= 0 else None]
            row += [by_model.loc[m, "image_png"] if m in by_model.index else None for m in models]
            cells.append(row)
            labels.append(f"t={t}")
        report.grid(f"inversion_{init}", cells, labels, ["target", "source", *models], caption)


def report_outside(report, rows, lookup: dict, models: list[str], dataset: str) -> None:
    """Fig. 6 (right): inversions of images from outside the models' training distribution, per start."""
    for init, part in rows.groupby("init"):
        cells, labels = [], []
        for t in sorted(part["target_index"].unique())[:MAX_ROWS]:
            by_model = part[part["target_index"] == t].set_index("model_id")
            split = by_model["split"].iloc[0]
            cells.append([lookup.get((dataset, split, int(t))),
                          *(by_model.loc[m, "image_png"] if m in by_model.index else None for m in models)])
            labels.append(f"t={t}")
        report.grid(f"ood_inversion_{dataset}_{init}", cells, labels, ["target", *models],
                    f"Fig. 6 (right): inverting images from outside the training distribution ({dataset}), from {init}")


def summary(models: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Per model and block (steps, step_size): accuracies and the inversion statistics of the paper's Sec. 4.1.
    models: the models table, one row per model_id (index).

    other_class_nearer_target: the fraction of inversions started from an image of another class that end
    nearer the target than their source in pixel L2 (the Fig. 3 observation as a number).
    """
    out = []
    keys = ["model_id", *(c for c in ("steps", "step_size") if c in rows.columns)]  # one row per block and model
    for values, group in rows.groupby(keys):
        setting = dict(zip(keys, values, strict=True))
        model_id = setting["model_id"]
        other = group[(group["init"] == "image") & (group["source_class"] != group["target_class"])]
        model = models.loc[model_id] if model_id in models.index else None
        out.append({
            **setting,
            "robust": bool(model["robust"]) if model is not None and pd.notna(model["robust"]) else None,
            "eps": float(model["eps"]) if model is not None else None,
            "clean_acc": float(model["clean_acc"]) if model is not None else None,
            "adv_acc": float(model["adv_acc"]) if model is not None else None,
            "jobs": len(group),
            "mean_rep_dist_rel": group["rep_dist_rel"].mean(),
            "mean_pix_dist_target": group["pix_dist_target"].mean(),
            "other_class_nearer_target": (other["pix_dist_target"] < other["pix_dist_source"]).mean(),
            "other_class_judged_target": judged_as_target(other),
            "judge_model_id": judge_of(other),
            "other_class_jobs": len(other),
        })
    return pd.DataFrame(out)


KIND = JobKind("invert", InvertSpec, expand, run_towards_targets, params=PGD_PARAMS, report=report, tunable=True,
               judged=True, datasets=lambda block: block.targets_from, summary=summary)
