"""invert_sweep — Fig. 4: Eq. 4 from an image of another class, constrained to an L2 ball of each radius
around it. Report: the mean rep_dist_rel reachable within each radius, per model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from robrep.core.config import Positive, distinct
from robrep.core.errors import ConfigError
from robrep.fanout.job import PGD_PARAMS, ExpandContext, JobKind, PGDBlockSpec
from robrep.fanout.kinds.common import run_towards_targets, slot_seed
from robrep.fanout.selection import other_class_source


@dataclass(frozen=True)
class InvertSweepSpec(PGDBlockSpec):
    kind: Literal["invert_sweep"] = "invert_sweep"
    radii: tuple[Positive, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # L2 radii around the source, [0,1]-pixel units

    def validate(self) -> None:
        super().validate()
        if not self.radii:
            raise ConfigError("fanout.jobs invert_sweep: radii is empty; give the L2 radii to sweep, e.g. [0.5, 1, 2]")
        distinct(self.radii, "fanout.jobs invert_sweep: radii", "radius")


def expand(block: InvertSweepSpec, ctx: ExpandContext) -> list[dict]:
    return [{"target_index": t, "source_index": other_class_source(ctx.labels, t, ctx.rng_seed), "init": "image",
             "eps": r, "rng_seed": slot_seed(ctx.rng_seed, t)} for t in ctx.indices for r in block.radii]



def report(report, rows, lookup: dict) -> None:
    if not report.section("Constrained inversion: rep_dist_rel against radius (Fig. 4)", rows, "invert_sweep rows",
                          "add a {kind: invert_sweep, radii: [...]} block"):
        return
    curve = rows.groupby(["model_id", "eps"])["rep_dist_rel"].mean().reset_index()
    robust = rows.groupby("model_id")["model_robust"].first()
    series = {f"{m}{' (robust)' if robust[m] else ''}": list(zip(g["eps"], g["rep_dist_rel"], strict=True))
              for m, g in curve.groupby("model_id")}
    trained = rows[rows["model_robust"].astype(bool)].groupby("model_id")["model_eps"].first()
    marks = {f"{m}: trained at {eps:g}": float(eps) for m, eps in trained.items()}
    report.chart("fig4_sweep", series, "L2 radius around the source", "mean rep_dist_rel",
                 "Fig. 4: the lowest representation distance reachable within each radius, averaged over "
                 f"{rows.groupby('model_id').size().min() // max(1, rows['eps'].nunique())} pairs per model; a robust "
                 "model's representation barely moves within its training radius", marks=marks)
    report.table(curve.pivot(index="eps", columns="model_id", values="rep_dist_rel").reset_index())


KIND = JobKind("invert_sweep", InvertSweepSpec, expand, run_towards_targets, params=PGD_PARAMS, report=report,
               tunable=True, varies=("eps",))
