"""The proof that a kind is one file: a kind defined here, with a parameter of its own (sigma), registered from this
module alone (ROBREP_KINDS names it for the fan-out's processes), runs through config parsing, planning, a real
Ray worker, the store, `jobs.store check` and the report, and its parameter comes back as a column."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pytest
import torch
import yaml
from helpers import REPO, config_for, run_module, seed_store

from robrep.core.errors import ConfigError
from robrep.experiments import noise_image
from robrep.fanout.job import BatchContext, BlockSpec, ExpandContext, Job, JobKind, Param
from robrep.fanout.kinds.common import BatchImages, slot_seed
from robrep.fanout.registry import register
from robrep.images import encode_png


@dataclass(frozen=True)
class NoiseProbeSpec(BlockSpec):
    kind: Literal["noise_probe"] = "noise_probe"
    sigma: float = 0.1  # std of the Gaussian noise added to the image, in [0,1] pixels

    def validate(self) -> None:
        if not 0 < self.sigma <= 1:
            raise ConfigError(f"fanout.jobs noise_probe: sigma={self.sigma} must be within (0, 1]")


def expand(block: NoiseProbeSpec, ctx: ExpandContext) -> list[dict]:
    return [{"target_index": t, "init": "image", "rng_seed": slot_seed(ctx.rng_seed, t)} for t in ctx.indices]


def probe(model, image: torch.Tensor, sigma: float, seed: int) -> tuple[torch.Tensor, float]:
    """The image plus noise (clipped to [0,1]) and how far R moves, relative to |R(image)|."""
    x = (image + sigma * (2 * noise_image(tuple(image.shape), seed, image.device) - 1)).clamp(0, 1)
    with torch.no_grad():
        r, r0 = model.representation(torch.stack([x, image]))
    return x, float((r - r0).norm() / r0.norm())


def run(ctx: BatchContext, jobs: list[Job]) -> list[dict]:
    images = BatchImages(ctx, jobs)
    rows = []
    for job in jobs:
        x, moved = probe(ctx.model, images.by_index[job.target_index], job.sigma, job.rng_seed)
        rows.append({**job.columns(), "rep_dist_rel": moved, "image_png": encode_png(x), "pred_class": -1,
                     "target_class": images.label_of[job.target_index], "source_class": -1, "steps_taken": 0})
    return rows


def report(report, rows, lookup: dict) -> None:
    if not report.section("Noise probe", rows, "noise_probe rows", "add a {kind: noise_probe} block"):
        return
    models = sorted(rows["model_id"].unique())
    cells = [[lookup.get((r.dataset, r.split, int(r.target_index))), r.image_png] for r in rows.itertuples()]
    report.grid("noise_probe", cells, [f"{r.model_id[:8]} {r.rep_dist_rel:.2f}" for r in rows.itertuples()],
                ["image", "probed"], f"each image with noise of sigma {rows['sigma'].iloc[0]:g}; models {models}")


KIND = JobKind("noise_probe", NoiseProbeSpec, expand, run, report=report,
               params=(Param("sigma", pa.float32(), math.nan, from_block=True),))
if __name__ in os.environ.get("ROBREP_KINDS", "").split(","):  # a process of the fan-out imported this module
    register(KIND)


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_a_kind_defined_in_one_module_runs_end_to_end_and_its_parameter_is_a_column(untrained_pair, tmp_path):
    from robrep.checkpoint import load_checkpoint
    from robrep.store import load_results

    store = seed_store(untrained_pair, tmp_path)
    config = config_for(untrained_pair, store, indices={"mode": "list", "values": [0, 5, 9]},
                        jobs=[{"kind": "noise_probe", "sigma": 0.25}])
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(config))
    here = Path(__file__).parent  # this module, and the helpers it imports, for the fan-out's processes
    env = {"ROBREP_KINDS": "test_new_kind", "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), str(REPO)])}
    proc = run_module("jobs.fanout", "--config", str(path), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "6 jobs, 0 already in the store, 6 to run" in proc.stdout

    # Read back in this process, where the kind is not registered: the store keeps its column.
    rows = load_results(store)
    assert len(rows) == 6 and set(rows["kind"]) == {"noise_probe"} and rows["job_id"].is_unique
    assert rows["sigma"].tolist() == [0.25] * 6  # its own parameter, a float32 column (0.25 is exact)
    # The worker's numbers, recomputed here from the checkpoint and the image.
    from datasets.beton import read_indices
    for row in rows.itertuples():
        model = load_checkpoint(untrained_pair / "ckpt" / row.model_id)[0].eval()
        image = read_indices(untrained_pair / "data" / "test.beton", [int(row.target_index)])[0][0]
        assert row.rep_dist_rel == pytest.approx(probe(model, image, 0.25, int(row.rng_seed))[1], rel=1e-4)

    again = run_module("jobs.fanout", "--config", str(path), env=env)  # the job ids are stable: nothing reruns
    assert again.returncode == 0 and "6 jobs, 6 already in the store, 0 to run" in again.stdout, again.stderr[-2000:]
    check = run_module("jobs.store", "check", "--store", str(store), env=env)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    assert re.search(r"results: 6 rows in \d+ parts, 0 damaged", check.stdout), check.stdout
    out = tmp_path / "report"
    shown = run_module("jobs.report", "--store", str(store), "--out", str(out), env=env)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert (out / "noise_probe.png").exists() and "Noise probe" in (out / "report.html").read_text()
    assert not list(store.rglob("*.tmp")) and not (store / "_quarantine").exists()

    # A bad value of the kind's own parameter is caught at the door, by its spec (here, in this process).
    from cluster.specs import FanoutRunSpec
    from robrep.core.config import from_dict
    from robrep.fanout.registry import KINDS

    register(KIND)
    try:
        with pytest.raises(ConfigError, match=r"sigma=3.0 must be within \(0, 1\]"):
            from_dict(FanoutRunSpec, {**config["fanout"], "jobs": [{"kind": "noise_probe", "sigma": 3.0}]}, "fanout.")
    finally:
        del KINDS["noise_probe"]
    assert len(pd.read_parquet(store / "results")) == 6
