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
from conftest import SMOKE, run_module, store_overrides
from test_fanout import config_for, many_jobs, parts, plan_of, run_fanout_cli, seed_store, trained, wait_for  # noqa: F401

from robrep.core.errors import ConfigError


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_a_second_driver_is_refused_while_the_first_writes(trained, tmp_path):  # noqa: F811
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


def test_a_row_on_disk_twice_is_read_once(tmp_path):
    from test_store import make_rows

    from robrep.store import read_table
    from robrep.store.commit import commit_part, part_name
    from robrep.store.schema import RESULTS_SCHEMA, to_table

    table = to_table(make_rows(["a", "b"]), RESULTS_SCHEMA)
    commit_part(tmp_path, "results", table, {"kind": "invert", "model_id": "m"}, part_name(["a", "b"]))
    commit_part(tmp_path, "results", table, {"kind": "invert", "model_id": "m"}, "part-other-driver.parquet")
    assert len(pd.read_parquet(tmp_path / "results")) == 4  # what is on disk
    assert sorted(read_table(tmp_path, "results")["job_id"]) == ["a", "b"]  # what a reader gets


def test_partition_values_read_back_exactly_and_unsafe_names_are_refused(tmp_path):
    from test_store import make_rows

    from robrep.store import read_table
    from robrep.store.commit import commit_part, part_name
    from robrep.store.schema import RESULTS_SCHEMA, to_table

    table = to_table(make_rows(["a"]), RESULTS_SCHEMA)
    commit_part(tmp_path, "results", table, {"kind": "invert", "model_id": "007"}, part_name(["a"]))
    frame = read_table(tmp_path, "results", filters=[("model_id", "=", "007")])
    assert frame["model_id"].tolist() == ["007"]
    for bad in ("../../x", "a%20b", "a/b", ".hidden", ""):
        with pytest.raises(ConfigError, match="is not a valid name"):
            commit_part(tmp_path, "results", table, {"kind": "invert", "model_id": bad}, part_name(["a"]))
    from jobs.config import load_config

    with pytest.raises(ConfigError, match=r"train.model_id='\.\./\.\./x' is not a valid name"):
        load_config(SMOKE, ["train.digits_robust.model_id=../../x"])
    assert not (tmp_path.parent / "x").exists()


@pytest.mark.ffcv
def test_job_ids_change_with_the_weights_and_the_data(trained, tmp_path):  # noqa: F811
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


def test_credentials_in_a_uri_are_redacted_everywhere_they_are_shown():
    from robrep.core.location import redact, redact_all

    assert redact("s3://AKIA123:s3cr3t@bucket/robrep/store") == "s3://***@bucket/robrep/store"
    assert redact("s3://bucket/store?access_key=AKIA&secret_key=s3cr3t&region=eu") == \
        "s3://bucket/store?access_key=***&secret_key=***&region=eu"
    assert redact("/local/store") == "/local/store"
    manifest = redact_all({"store": "gs://user:pw@b/s", "fanout": {"models": ["m"]}, "steps": 3})
    assert "pw" not in json.dumps(manifest) and manifest["fanout"] == {"models": ["m"]}
