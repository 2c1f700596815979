"""kill -9 of the fan-out driver at three points of a commit, three times each: before a part's rename, after
it (and before the manifest), and during the failures write. Every rerun ends with exactly one row per row
key and every job present. The drivers join one Ray head started here, so each run costs seconds.
(Points are reached through robrep.core.faults.fault_point, inert unless ROBREP_FAULT is set.)"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import REPO, config_for, seed_store, start_head, stop_head

pytestmark = [pytest.mark.ray, pytest.mark.ffcv, pytest.mark.slow]

POINTS = [("results.before_rename", (1, 3, 2)), ("manifest.before", (1, 1, 1)),
          ("failures.before_rename", (1, 2, 3))]
GOOD_JOBS = 2 * 6 * 2  # 2 models x 6 images x {noise, image}; a third model's jobs all fail


@pytest.fixture
def trained(untrained_pair):
    return untrained_pair


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head whose workers fail every batch of the model `broken` (robrep.core.faults.failure_point)."""
    os.environ["ROBREP_FAIL"] = "worker.batch:broken"
    try:
        process, gcs, _, _ = start_head(tmp_path_factory.mktemp("head"))
    finally:
        del os.environ["ROBREP_FAIL"]
    yield gcs
    stop_head(process)


def driver(config: dict, folder: Path, fault: str | None) -> subprocess.CompletedProcess:
    path = folder / f"config-{time.time_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ROBREP_FAULT", None)
    if fault:
        env["ROBREP_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "jobs.fanout", "--config", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def broken_model(trained: Path, folder: Path) -> str:
    """A good checkpoint named `broken`, whose every batch the head's workers fail (ROBREP_FAIL): a checkpoint
    that does not load is refused at planning now, so it can no longer be the job that fails in a worker."""
    broken = folder / "broken"
    shutil.copytree(trained / "ckpt" / "digits_robust", broken)
    meta = (broken / "meta.json").read_text().replace('"model_id": "digits_robust"', '"model_id": "broken"')
    (broken / "meta.json").write_text(meta)
    return str(broken)


@pytest.mark.parametrize("point, counts", POINTS, ids=[p for p, _ in POINTS])
def test_a_driver_killed_mid_commit_loses_and_duplicates_nothing(trained, head, tmp_path, point, counts):
    """Three drivers in a row on one store, each killed at the point (the n-th time it gets there), then a
    rerun: every good job is present exactly once, on disk and as read."""
    store = seed_store(trained, tmp_path)
    config = config_for(trained, store, models=["digits_standard", "digits_robust", broken_model(trained, tmp_path)],
                        indices={"mode": "first", "n": 6}, batch_size=4, max_in_flight=1, workers=1,
                        jobs=[{"kind": "invert", "inits": ["noise", "image"], "step_size": 0.1, "steps": 5}])
    config["ray"]["address"] = head
    for n in counts:
        killed = driver(config, tmp_path, f"{point}:{n}")
        assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-3000:]
    rerun = driver(config, tmp_path, None)
    assert rerun.returncode == 1 and "jobs failed" in rerun.stdout, rerun.stderr[-3000:]  # the broken model only
    on_disk = pd.read_parquet(store / "results")
    tally = {"runs": len(counts) + 1, "killed": len(counts), "lost": GOOD_JOBS - on_disk["job_id"].nunique(),
             "duplicated": int(on_disk["job_id"].duplicated().sum())}
    print(f"{point}: {tally}")
    assert tally["lost"] == 0 and tally["duplicated"] == 0 and len(on_disk) == GOOD_JOBS
    failures = pd.read_parquet(store / "failures")
    assert set(failures["model_id"]) == {"broken"} and "injected failure" in failures["error"].iloc[0]
    assert list((store / "_manifests").glob("*.json"))
