"""Train every model of the config with Ray Train, evaluate it, and record it in the store's models table.

    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/digits.yaml

A model already in the models table (with its checkpoint on disk) is skipped; an interrupted run
resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from jobs.common import git_sha, run_entry_point
from jobs.config import ExperimentConfig, ModelSpec
from robrep.checkpoint import read_meta, save_checkpoint
from robrep.errors import CheckpointError, DataError
from robrep.models import create_model
from robrep.store import MODELS_SCHEMA, now_utc, read_table, to_table


def final_checkpoint_dir(config: ExperimentConfig, model_id: str) -> Path:
    return config.storage_root / "models" / model_id


def audit_dir(config: ExperimentConfig, model_id: str) -> Path:
    return config.storage_root / "audit" / model_id


def arch_kwargs(spec: ModelSpec) -> dict:
    return {"width": spec.width} if spec.arch == "small_cnn" else {}


def _loop_config(config: ExperimentConfig, spec: ModelSpec, info: dict) -> dict:
    return {
        "model_id": spec.model_id, "arch": spec.arch, "arch_kwargs": arch_kwargs(spec),
        "num_classes": info["num_classes"], "mean": info["mean"], "std": info["std"],
        "train_path": str(config.data.path("train")), "test_path": str(config.data.path("test")),
        "store": str(config.store_root), "batch_size": spec.batch_size, "epochs": spec.epochs, "lr": spec.lr,
        "momentum": spec.momentum, "weight_decay": spec.weight_decay, "lr_milestones": list(spec.lr_milestones),
        "lr_gamma": spec.lr_gamma, "warmup_epochs": spec.warmup_epochs, "label_smoothing": spec.label_smoothing,
        "augment": spec.augment, "padding": spec.padding, "seed": spec.seed,
        "threads": max(1, int(spec.cpus_per_worker)), "bf16": spec.bf16,
        "attack": None if spec.attack is None else vars(spec.attack),
        "eval_attack": None if spec.eval_attack is None else vars(spec.eval_attack),
        "eval_every": spec.eval_every, "eval_max_images": spec.eval_max_images,
        "audit_dir": str(audit_dir(config, spec.model_id)) if spec.audit else None,
    }


def already_trained(config: ExperimentConfig, model_id: str) -> bool:
    models = read_table(config.store_root, "models")
    if model_id not in set(models["model_id"]):
        return False
    try:
        read_meta(final_checkpoint_dir(config, model_id))
    except CheckpointError:
        return False
    return True


def last_epoch_metrics(config: ExperimentConfig, model_id: str) -> dict:
    """The train_metrics row of the model's last epoch (evaluated on the whole test set)."""
    metrics = read_table(config.store_root, "train_metrics", filters=[("model_id", "=", model_id)])
    if metrics.empty:
        raise RuntimeError(f"no train_metrics rows for {model_id} in {config.store_root}")
    return metrics.sort_values("epoch").iloc[-1].to_dict()


def train_one(config: ExperimentConfig, spec: ModelSpec) -> dict:
    from cluster.train import STATE_FILE, fit
    from datasets.beton import read_info

    info = read_info(config.data.path("train"))
    test_info = read_info(config.data.path("test"))
    if test_info["num_classes"] != info["num_classes"]:
        raise DataError(f"train has {info['num_classes']} classes but test has {test_info['num_classes']}")
    resources = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if spec.use_gpu else {})}
    start = time.time()
    state_dir = fit(
        _loop_config(config, spec, info),
        name=spec.model_id, storage_path=str(config.storage_root / "ray_train"), num_workers=spec.num_workers,
        use_gpu=spec.use_gpu, resources_per_worker=resources,
        placement_strategy=spec.placement_strategy, max_failures=spec.max_failures,
    )
    seconds = time.time() - start
    state = torch.load(state_dir / STATE_FILE, map_location="cpu", weights_only=True)
    model = create_model(spec.arch, info["num_classes"], info["mean"], info["std"], **arch_kwargs(spec))
    model.load_state_dict(state["model"])
    last = last_epoch_metrics(config, spec.model_id)
    robust = spec.attack is not None
    meta = {
        "model_id": spec.model_id, "arch": spec.arch, "arch_kwargs": arch_kwargs(spec),
        "num_classes": info["num_classes"], "mean": info["mean"], "std": info["std"],
        "dataset": info["source"], "resolution": info["resolution"], "robust": robust,
        "constraint": spec.attack.constraint if robust else None, "eps": spec.attack.eps if robust else 0.0,
        "epochs": int(state["epoch"]) + 1, "git_sha": git_sha(),
    }
    checkpoint = save_checkpoint(final_checkpoint_dir(config, spec.model_id), model, meta)
    return {
        "model_id": spec.model_id, "arch": spec.arch, "dataset": info["source"], "robust": robust,
        "constraint": meta["constraint"], "eps": meta["eps"], "clean_acc": last["clean_acc"],
        "adv_acc": last["adv_acc"], "adv_eps": spec.eval_attack.eps if spec.eval_attack else None,
        "adv_steps": spec.eval_attack.steps if spec.eval_attack else None, "epochs": meta["epochs"],
        "seconds": seconds, "checkpoint": str(checkpoint), "git_sha": meta["git_sha"], "created_at": now_utc(),
    }


def train_all(config: ExperimentConfig) -> None:
    from cluster.store import append_rows

    for spec in config.train:
        if already_trained(config, spec.model_id):
            print(f"[train] {spec.model_id}: already in the models table, skipped", flush=True)
            continue
        kind = "robust" if spec.attack else "standard"
        workers = spec.num_workers
        print(f"[train] {spec.model_id}: {kind} {spec.arch}, {spec.epochs} epochs, {workers} workers", flush=True)
        row = train_one(config, spec)
        append_rows(config.store_root, "models", to_table([row], MODELS_SCHEMA), key=spec.model_id)
        print(
            f"[train] {spec.model_id}: clean {row['clean_acc']:.4f}, adversarial {row['adv_acc']:.4f} "
            f"(eps {row['adv_eps']}), {row['seconds']:.0f}s",
            flush=True,
        )


def main(config: ExperimentConfig) -> None:
    from cluster.connect import connect
    from datasets.beton import read_info

    read_info(config.data.path("train"))  # a missing dataset fails here, before Ray starts
    connect(config.ray.address, config.ray.num_cpus)
    train_all(config)


if __name__ == "__main__":
    run_entry_point(main, __doc__)
