"""The fan-out: expansion, bad input before any job, a killed worker, a killed driver, scale, failures."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from helpers import REPO, config_for, seed_store

SMOKE = "jobs/configs/digits_smoke.yaml"
pytestmark = pytest.mark.ffcv  # the module fixture builds the digits betons


@pytest.fixture
def trained(untrained_pair):
    return untrained_pair


def plan_of(config: dict):
    from jobs.config import ExperimentConfig
    from jobs.fanout import plan
    from robrep.core.config import from_dict

    return plan(from_dict(ExperimentConfig, config))


def test_expansion_is_deterministic_and_covers_every_kind(trained, tmp_path):
    config = config_for(trained, seed_store(trained, tmp_path))
    first, second = plan_of(config), plan_of(config)
    assert [j.job_id for j in first] == [j.job_id for j in second]
    assert len({j.job_id for j in first}) == len(first) == 58
    kinds = {j.kind for j in first}
    assert kinds == {"invert", "invert_sweep", "pairs", "visualize", "regularized_visualize", "manipulate",
                     "interpolate", "top_activating", "representations"}  # representations feeds top_activating
    judged_by = {j.model_id: j.judge_model_id for j in first}
    assert judged_by == {"digits_standard": "digits_robust", "digits_robust": "digits_standard"}
    outside = [j for j in first if j.dataset == "glyphs"]
    assert len(outside) == 4 and {j.dataset_path.rsplit("/", 1)[-1] for j in outside} == {"glyphs.beton"}
    assert {j.model_id for j in first if j.kind == "pairs"} == {"digits_standard"}
    lams = sorted(j.lam for j in first if j.kind == "interpolate" and j.model_id == "digits_robust")
    assert lams == [0.0, 0.5, 1.0]


def test_index_selection_modes():
    from robrep.core.errors import DataError
    from robrep.fanout.selection import IndexSpec, select_indices

    labels = np.repeat(np.arange(5), 10)
    assert select_indices(IndexSpec("first", 3), labels) == [0, 1, 2]
    assert select_indices(IndexSpec("list", values=(7, 3)), labels) == [7, 3]
    picked = select_indices(IndexSpec("random", 6, rng_seed=1), labels)
    assert picked == select_indices(IndexSpec("random", 6, rng_seed=1), labels) and len(set(picked)) == 6
    per_class = select_indices(IndexSpec("per_class", 2, rng_seed=0), labels)
    assert np.bincount(labels[per_class]).tolist() == [2] * 5
    with pytest.raises(DataError, match="out of range"):
        select_indices(IndexSpec("list", values=(50,)), labels)


def run_fanout_cli(config: dict, tmp: Path, **popen) -> subprocess.Popen:
    path = tmp / f"fanout-{time.time_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "jobs.fanout", "--config", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_missing_checkpoint_and_class_mismatch(trained, tmp_path):
    from robrep.store.commit import append_rows
    from robrep.store.schema import MODELS_SCHEMA, now_utc, to_table

    store = tmp_path / "store"
    append_rows(store, "models", to_table([{"model_id": "gone", "checkpoint": str(tmp_path / "gone"),
                                            "created_at": now_utc()}], MODELS_SCHEMA), key="gone")
    proc = run_fanout_cli(config_for(trained, store, models=["gone"], jobs=[{"kind": "invert"}]), tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "CheckpointError" in err and "meta.json is missing" in err

    from robrep.checkpoint import save_checkpoint
    from robrep.models import create_model

    save_checkpoint(tmp_path / "c3", create_model("small_cnn", 3, [0.5] * 3, [0.2] * 3, width=8),
                    {"arch": "small_cnn", "arch_kwargs": {"width": 8}, "num_classes": 3, "mean": [0.5] * 3,
                     "std": [0.2] * 3})
    proc = run_fanout_cli(config_for(trained, store, models=[str(tmp_path / "c3")], jobs=[{"kind": "invert"}]),
                          tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "has 3 classes" in err and "has 10" in err


def many_jobs(trained, store, n=120, steps=40):
    return config_for(trained, store, indices={"mode": "first", "n": n}, batch_size=16, max_in_flight=2,
                      jobs=[{"kind": "invert", "inits": ["noise", "gray", "image"], "step_size": 0.1,
                             "steps": steps}])


def parts(store: Path) -> list[Path]:
    return list((store / "results").rglob("part-*.parquet")) if (store / "results").exists() else []


def wait_for(predicate, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_pool_worker_costs_nothing(trained, tmp_path):
    store = seed_store(trained, tmp_path)
    proc = run_fanout_cli(many_jobs(trained, store), tmp_path)
    wait_for(lambda: len(parts(store)) >= 1, proc)
    # Only processes this test started: the driver's descendants (its local Ray), never others on the machine.
    children = psutil.Process(proc.pid).children(recursive=True)
    workers = [p for p in children if "PoolWorker" in " ".join(p.cmdline())]
    assert workers, "no pool worker process found among the driver's descendants"
    workers[0].send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "a pool worker died" in out
    results = pd.read_parquet(store / "results")
    assert len(results) == 2 * 120 * 3 and results["job_id"].is_unique


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_driver_resumes_with_only_the_missing_jobs(trained, tmp_path):
    store = seed_store(trained, tmp_path)
    config = many_jobs(trained, store)
    proc = run_fanout_cli(config, tmp_path, start_new_session=True)
    wait_for(lambda: len(parts(store)) >= 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray
    proc.wait(timeout=60)
    committed = len(pd.read_parquet(store / "results"))
    assert 0 < committed < 720
    config["fanout"]["compact_parts"] = 2  # the rerun compacts its folders: before its resume decision and after
    rerun = run_fanout_cli(config, tmp_path)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    assert f"720 jobs, {committed} already in the store, {720 - committed} to run" in out
    assert out.count("[fanout] compacted results/kind=invert/model_id=") >= 2, out[-3000:]
    results = pd.read_parquet(store / "results")
    assert len(results) == 720 and results["job_id"].is_unique
    assert len(parts(store)) == 2  # one file per model's folder
    assert not list(store.rglob("*.tmp"))


@pytest.mark.ray
@pytest.mark.slow
def test_scale_over_2000_jobs_exactly_one_row_each(trained, tmp_path):
    store = seed_store(trained, tmp_path)
    config = many_jobs(trained, store, n=359, steps=2)
    config["fanout"]["batch_size"] = 128
    proc = run_fanout_cli(config, tmp_path)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    results = pd.read_parquet(store / "results", columns=["job_id"])
    assert len(results) == 2 * 359 * 3 == 2154 and results["job_id"].is_unique


@pytest.mark.ray
def test_a_failing_job_is_recorded_and_the_rest_go_on():
    import ray

    from cluster.pool import run_pool

    def batch_fn(jobs, cache):
        if any(j["n"] == 5 for j in jobs):
            raise ValueError("job 5 is broken")
        return [{"n": j["n"]} for j in jobs]

    done, failed = [], []
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        batches = [[{"n": i} for i in range(b, b + 4)] for b in range(0, 12, 4)]
        run_pool(batches, batch_fn, workers=2, cpus_per_worker=1, max_in_flight=2,
                 on_done=lambda batch, rows: done.extend(r["n"] for r in rows),
                 on_error=lambda batch, error: failed.append((batch[0]["n"], str(error))))
    finally:
        ray.shutdown()
    assert sorted(done) == [n for n in range(12) if n != 5]
    assert len(failed) == 1 and failed[0][0] == 5 and "job 5 is broken" in failed[0][1]


@pytest.mark.parametrize("kind", __import__("robrep.fanout.registry", fromlist=["list_kinds"]).list_kinds())
def test_every_registered_kind_plans_runs_and_fits_its_table(trained, tmp_path, kind):
    """Each kind of the registry, alone, through planning and the worker (in this process, no Ray)."""
    from cluster.worker import run_batch
    from robrep.fanout.plan import pack
    from robrep.fanout.registry import complete_rows, get_kind, table_schema
    from robrep.store.schema import to_table

    block = {"kind": kind}
    if kind in ("visualize", "manipulate", "top_activating"):
        block["coordinates"] = {"mode": "list", "values": [1, 2]}
    if get_kind(kind).spec.__dataclass_fields__.get("steps"):
        block["steps"] = 3
    config = config_for(trained, seed_store(trained, tmp_path), indices={"mode": "first", "n": 2}, jobs=[block])
    jobs = plan_of(config)
    assert jobs and all(len(j.job_id) == 24 for j in jobs) and len({j.job_id for j in jobs}) == len(jobs)
    cache: dict = {}
    for batch in pack([j for j in jobs if j.kind == kind], 8):
        rows = run_batch(batch, cache)
        name = get_kind(kind).table
        table = to_table(complete_rows(name, rows), table_schema(name))
        assert set(table.column("job_id").to_pylist()) == {j.job_id for j in batch}
        by_id = {j.job_id: j for j in batch}
        for param in get_kind(kind).params:  # each of the kind's parameters is a column with the job's value
            values = table.column(param.name).to_pylist()
            expected = [by_id[i].get(param.name) for i in table.column("job_id").to_pylist()]
            if param.name == "coordinate":  # a "top" coordinate (-1 - rank) is resolved to the one it was
                expected = [v if e < 0 else e for v, e in zip(values, expected, strict=True)]
            assert values == pytest.approx(expected, nan_ok=True), param.name
        assert len(rows) >= len(batch)
