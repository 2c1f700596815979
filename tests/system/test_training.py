"""Distributed training on real Ray Train: two nodes, a killed worker. (A stopped and resubmitted run resumes at
the next epoch: tests/test_lifecycle.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO

pytestmark = [pytest.mark.ray, pytest.mark.ffcv, pytest.mark.slow]


def experiment(tmp: Path, **train) -> dict:
    """64 synthetic images whose label is their index, so the labels a rank trained on name its data."""
    model = {"model_id": "m", "arch": "small_cnn", "width": 8, "epochs": 2, "batch_size": 16, "lr": 0.05,
             "lr_milestones": [100], "audit": True, "eval_attack": {"eps": 0.5, "steps": 2, "step_size": 0.25}}
    model.update(train)
    return {
        "name": "t", "store": str(tmp / "store"), "storage_path": str(tmp / "ckpt"),
        "data": {"source": "synthetic", "resolution": 8, "num_classes": 64, "per_class": 1, "dir": str(tmp / "data")},
        "train": [model],
    }


def audits(tmp: Path) -> list[dict]:
    records = []
    for path in sorted((tmp / "ckpt" / "audit" / "m").glob("*.pt")):
        rank, epoch, _ = path.stem.split("_")
        records.append({"rank": int(rank[4:]), "epoch": int(epoch[5:]), **torch.load(path, weights_only=True)})
    return records


def test_two_nodes_read_disjoint_data_and_end_with_identical_weights(tmp_path):
    """... and evaluate each image of a test set whose size (63) is not a multiple of the worker count exactly once,
    so the models table's accuracies are those of the final model on the whole test set."""
    import ray
    from ray.cluster_utils import Cluster

    from cluster.connect import connect
    from datasets.beton import read_all, write_beton
    from datasets.sources import _array_source, synthetic
    from jobs.build_dataset import build
    from jobs.config import ExperimentConfig
    from jobs.train import train_all
    from robrep.checkpoint import load_checkpoint
    from robrep.core.config import from_dict
    from robrep.train import AttackSpec, evaluate

    config = from_dict(ExperimentConfig, experiment(tmp_path, placement_strategy="STRICT_SPREAD", num_workers=2))
    build(config.data)
    full = synthetic(64, 1, 8, rng_seed=5)  # the same 64 classes; 63 test images, labels 0..62
    write_beton(config.data.path("test"), _array_source("odd", full.images[:63], full.labels[:63], full.label_names),
                info={"split": "test"})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.2"})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.3")
        cluster.wait_for_nodes()
        connect(cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        train_all(config)
    finally:
        ray.shutdown()
        cluster.shutdown()
    records = audits(tmp_path)
    assert {(r["rank"], r["epoch"]) for r in records} == {(0, 0), (1, 0), (0, 1), (1, 1)}
    assert len({r["node_id"] for r in records}) == 2  # STRICT_SPREAD: one rank per node
    for epoch in (0, 1):
        rank0, rank1 = (set(r["labels"].tolist()) for r in records if r["epoch"] == epoch)
        assert not rank0 & rank1 and rank0 | rank1 == set(range(64))
    final = [r["weights_sha256"] for r in records if r["epoch"] == 1]
    assert final[0] == final[1]
    metrics = pd.read_parquet(tmp_path / "store" / "train_metrics")
    assert sorted(metrics["epoch"]) == [0, 1] and (metrics["world_size"] == 2).all()
    models = pd.read_parquet(tmp_path / "store" / "models")
    assert list(models["model_id"]) == ["m"] and models["epochs"].tolist() == [2]
    evaluated = sorted(torch.cat([r["eval_labels"] for r in records if r["epoch"] == 1]).tolist())
    assert evaluated == list(range(63)), "every test image once: none repeated to pad a shard, none left out"
    model, _ = load_checkpoint(models["checkpoint"].iloc[0])
    x, y = read_all(config.data.path("test"))
    exact = evaluate(model, [(x, y)], AttackSpec(eps=0.5, steps=2, step_size=0.25))
    assert models["clean_acc"].iloc[0] == pytest.approx(exact["clean_acc"], abs=1e-9)
    assert models["adv_acc"].iloc[0] * 63 == pytest.approx(round(models["adv_acc"].iloc[0] * 63), abs=1e-9)


def start_training(tmp: Path, config: dict) -> subprocess.Popen:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([sys.executable, "-m", "jobs.build_dataset", "--config", str(path)], cwd=REPO, env=env, check=True,
                   capture_output=True)
    log = open(tmp / f"train-{time.time():.0f}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "jobs.train", "--config", str(path)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout: float, proc: subprocess.Popen):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, "training ended before the test could interrupt it"
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


# Slow enough epochs to interrupt: 1,024 images at 16 px with a 3-step attack.
SLOW = {"epochs": 4, "attack": {"eps": 0.5, "steps": 3, "step_size": 0.2}}


def slow_data(config: dict) -> dict:
    config["data"].update(resolution=16, per_class=16)
    return config


def registered_epochs(tmp: Path) -> list[int]:
    """The epochs whose checkpoints Ray Train has registered (its persisted checkpoint manager snapshot): a
    checkpoint folder on disk is not yet one Ray Train resumes from."""
    path = tmp / "ckpt" / "ray_train" / "m" / "checkpoint_manager_snapshot.json"
    try:
        return [r["metrics"]["epoch"] for r in json.loads(path.read_text())["checkpoint_results"]]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []


def test_a_killed_worker_restarts_from_the_last_checkpoint(tmp_path):
    proc = start_training(tmp_path, slow_data(experiment(tmp_path, max_failures=1, **{**SLOW, "epochs": 8})))
    registered = wait_for(lambda: registered_epochs(tmp_path), 300, proc)
    victim = max((r for r in audits(tmp_path) if r["rank"] == 1), key=lambda r: r["epoch"])["pid"]
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, (tmp_path / "config.yaml").read_text()
    records = audits(tmp_path)
    assert len({r["pid"] for r in records if r["rank"] == 1}) == 2  # the worker group was restarted
    restarted = [r for r in records if r["rank"] == 1 and r["pid"] != victim]
    start = min(r["epoch"] for r in restarted)
    assert start >= max(registered) + 1 >= 1, (start, registered)  # from a checkpoint, never from epoch 0
    assert sorted(r["epoch"] for r in restarted) == list(range(start, 8))
    assert {r["epoch"] for r in records} == set(range(8))
    metrics = pd.read_parquet(tmp_path / "store" / "train_metrics")
    assert sorted(metrics["epoch"]) == list(range(8))  # a replayed epoch replaces its row
    assert pd.read_parquet(tmp_path / "store" / "models")["epochs"].tolist() == [8]


def test_bad_training_config_fails_before_any_worker(tmp_path):
    for bad, message in ((("attack", {"eps": -1.0, "steps": 7, "step_size": 0.5}), "attack.eps=-1.0 must be >= 0"),
                         (("attack", {"eps": 1.0, "steps": 0, "step_size": 0.5}), "steps=0 must be within"),
                         (("learning_rate", 0.1), "unknown config key 'train[0].learning_rate'")):
        config = experiment(tmp_path, **dict([bad]))
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.run([sys.executable, "-m", "jobs.train", "--config", str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "TrainController" not in proc.stdout + proc.stderr
