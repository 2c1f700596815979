"""The store keeps its promises when things go wrong: one writer at a time, damaged or foreign files never
block a read and their rows come back on a rerun, no duplicate rows whatever is on disk, names that cannot
leave their folder, partition values read back exactly, job ids that change with the weights and the data."""

import json
import shutil
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch
from helpers import SMOKE, config_for, run_module, seed_store, store_overrides
from test_fanout import many_jobs, plan_of, run_fanout_cli, wait_for


@pytest.fixture
def trained(untrained_pair):
    return untrained_pair


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_a_second_driver_is_refused_while_the_first_writes(trained, tmp_path):
    store = seed_store(trained, tmp_path)
    config = many_jobs(trained, store, n=120, steps=40)
    first = run_fanout_cli(config, tmp_path)
    wait_for(lambda: (store / "_lease.json").exists(), first)  # taken before the first starts its Ray
    second = run_fanout_cli(config, tmp_path)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2 and "the store is being written by run" in err and "wait_for_lease" in err, err
    assert first.poll() is None, "the first driver ended before the second tried: the test proved nothing"
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    results = pd.read_parquet(store / "results")
    assert len(results) == 2 * 120 * 3 and results["job_id"].is_unique
    assert not (store / "_lease.json").exists()


def test_a_dead_or_silent_holder_loses_the_lease_and_a_live_one_keeps_it(tmp_path):
    from robrep.store.lease import LeaseError, StoreLease

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"host": socket.gethostname(), "pid": int(done.stdout), "run_id": "dead",
            "heartbeat": "2999-01-01T00:00:00+00:00"}  # a fresh heartbeat, but its process has exited
    (tmp_path / "_lease.json").write_text(json.dumps(dead))
    with StoreLease(tmp_path, "mine"):
        assert json.loads((tmp_path / "_lease.json").read_text())["run_id"] == "mine"
        with pytest.raises(LeaseError, match="being written by run mine"):
            StoreLease(tmp_path, "other").__enter__()
    assert not (tmp_path / "_lease.json").exists()
    silent = {"host": "elsewhere", "pid": 1, "run_id": "silent", "heartbeat": "2020-01-01T00:00:00+00:00"}
    (tmp_path / "_lease.json").write_text(json.dumps(silent))
    with StoreLease(tmp_path, "mine"):
        pass
    alive = {**silent, "heartbeat": pd.Timestamp.now(tz="UTC").isoformat()}
    (tmp_path / "_lease.json").write_text(json.dumps(alive))
    with pytest.raises(LeaseError, match="host elsewhere"):
        StoreLease(tmp_path, "mine").__enter__()


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_damaged_and_foreign_files_never_block_a_read_and_a_rerun_restores_their_rows(trained_pair, tmp_path):
    from robrep.store import read_table

    shutil.copytree(trained_pair[0], tmp_path, dirs_exist_ok=True)
    store = tmp_path / "store"
    victim = sorted((store / "results" / "kind=invert" / "model_id=digits_robust").glob("part-*.parquet"))[0]
    lost = len(pd.read_parquet(victim))
    victim.write_bytes(victim.read_bytes()[:200])  # a power loss mid-write, or a bad copy
    (store / "results" / "kind=invert" / "README.txt").write_text("notes")
    check = run_module("jobs.store", "check", "--store", str(store))
    assert check.returncode == 1 and "README.txt: not a part file" in check.stdout and "unreadable" in check.stdout
    assert victim.exists()  # check changes nothing
    results = read_table(store, "results")  # the read works, and moves both aside with a warning
    assert len(results) == 68 - lost
    assert (store / "_quarantine" / "results" / "kind=invert" / "README.txt").exists() and not victim.exists()
    rerun = run_module("jobs.fanout", "--config", SMOKE, *store_overrides(tmp_path))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{lost} to run" in rerun.stdout
    results = pd.read_parquet(store / "results")
    assert len(results) == 68 and results[results["kind"] != "top_activating"]["job_id"].is_unique
    assert run_module("jobs.store", "check", "--store", str(store)).returncode == 0


@pytest.mark.ffcv
def test_job_ids_change_with_the_weights_and_the_data(trained, tmp_path):
    from robrep.checkpoint import load_checkpoint, read_meta, save_checkpoint

    store = seed_store(trained, tmp_path)
    config = config_for(trained, store, jobs=[{"kind": "invert"}])
    before = {j.job_id for j in plan_of(config)}
    assert before == {j.job_id for j in plan_of(config)}
    folder = tmp_path / "retrained"
    shutil.copytree(trained / "ckpt" / "digits_robust", folder)
    model, meta = load_checkpoint(folder)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # retrained under the same model_id
    save_checkpoint(folder, model, meta)
    config["fanout"]["models"] = ["digits_standard", str(folder)]
    config["fanout"]["jobs"] = [{"kind": "invert"}]
    after = {j.job_id for j in plan_of(config) if j.model_id == "digits_robust"}
    assert after and not after & before
    assert read_meta(folder)["digest"] != read_meta(trained / "ckpt" / "digits_robust")["digest"]

    data = tmp_path / "data"
    shutil.copytree(trained / "data", data)
    side = json.loads((data / "test.json").read_text())
    side["fingerprint"] = "another-build"  # the sidecar of a rebuilt dataset
    (data / "test.json").write_text(json.dumps(side))
    rebuilt = config_for(trained, store, jobs=[{"kind": "invert"}])
    rebuilt["data"]["dir"] = str(data)
    assert not {j.job_id for j in plan_of(rebuilt)} & before
