"""Train every model of the config with Ray Train, evaluate it, and record it in the store's models table.

    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/digits.yaml
    python -m jobs.train --config jobs/configs/digits.yaml --set train.digits_robust.epochs=3

A model already in the models table (with its checkpoint on disk) is skipped; an interrupted run
resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import sys
import threading
import time

import torch

from cluster.specs import TrainSpec
from jobs.common import check_resources, git_sha, run_entry_point
from jobs.config import ExperimentConfig
from robrep.checkpoint import model_digest, read_meta, save_checkpoint
from robrep.core.errors import CheckpointError, DataError
from robrep.core.location import join, redact
from robrep.models import create_model
from robrep.store import find_model, read_table
from robrep.store.commit import append_rows
from robrep.store.schema import MODELS_SCHEMA, now_utc, to_table


def final_checkpoint_dir(config: ExperimentConfig, model_id: str) -> str:
    return join(config.storage_root, "models", model_id)


def audit_dir(config: ExperimentConfig, model_id: str) -> str:
    return join(config.storage_root, "audit", model_id)


def already_trained(config: ExperimentConfig, model_id: str) -> bool:
    if find_model(config.store_root, model_id) is None:
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
        raise RuntimeError(f"no train_metrics rows for {model_id} in {redact(config.store_root)}")
    return metrics.sort_values("epoch").iloc[-1].to_dict()


class EpochProgress:
    """A progress bar of one training run's epochs (loss, accuracies), fed by the train_metrics rows that
    rank 0 commits to the store: it works wherever the workers run."""

    def __init__(self, store: str, spec: TrainSpec, every_s: float = 2.0):
        self.store, self.spec, self.every_s = store, spec, every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> EpochProgress:
        from tqdm import tqdm

        self.bar = tqdm(total=self.spec.epochs, unit="epoch", desc=self.spec.model_id, file=sys.stderr)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._update()
        self.bar.close()

    def _poll(self) -> None:
        while not self.stop.wait(self.every_s):
            self._update()

    def _update(self) -> None:
        metrics = read_table(self.store, "train_metrics", filters=[("model_id", "=", self.spec.model_id)])
        if metrics.empty:
            return
        last = metrics.sort_values("epoch").iloc[-1]
        self.bar.n = min(int(last["epoch"]) + 1, self.spec.epochs)
        self.bar.set_postfix(loss=f"{last['loss']:.3f}", train_acc=f"{last['train_acc']:.3f}",
                             clean=f"{last['clean_acc']:.3f}", adv=f"{last['adv_acc']:.3f}")


def train_one(config: ExperimentConfig, spec: TrainSpec) -> dict:
    from cluster.train import TrainRun, fit
    from datasets.beton import channels, read_info

    data = config.data
    info = read_info(data.local("train"))
    test_info = read_info(data.local("test"))
    if test_info["num_classes"] != info["num_classes"]:
        raise DataError(f"train has {info['num_classes']} classes but test has {test_info['num_classes']}")
    run = TrainRun(spec, info["num_classes"], tuple(info["mean"]), tuple(info["std"]),
                   str(data.path("train")), str(data.path("test")), config.store_root,
                   audit_dir(config, spec.model_id) if spec.audit else None,
                   data.stage_source("train"), data.stage_source("test"))
    with torch.device("meta"):
        shape = create_model(spec.arch, info["num_classes"], info["mean"], info["std"], **spec.arch_kwargs)
    attack = (f"L2 eps {spec.attack.eps:g}, {spec.attack.steps} steps of {spec.attack.step_size:g}"
              if spec.attack else "standard")
    print(f"[train] {spec.model_id}: {spec.arch} {spec.arch_kwargs or ''} on {channels(info)}-channel "
          f"{info['resolution']} px images, R(x) {shape.representation_dim}-d; {attack}", flush=True)
    start = time.time()
    with EpochProgress(config.store_root, spec):
        state = fit(run, storage_path=join(config.storage_root, "ray_train"))
    seconds = time.time() - start
    model = create_model(spec.arch, info["num_classes"], info["mean"], info["std"], **spec.arch_kwargs)
    model.load_state_dict(state["model"])
    last = last_epoch_metrics(config, spec.model_id)
    robust = spec.attack is not None
    meta = {
        "model_id": spec.model_id, "arch": spec.arch, "arch_kwargs": spec.arch_kwargs,
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
        "seconds": seconds, "checkpoint": checkpoint, "git_sha": meta["git_sha"], "created_at": now_utc(),
        "digest": model_digest(checkpoint),
    }


def train_all(config: ExperimentConfig) -> None:
    for spec in config.train:
        if already_trained(config, spec.model_id):
            print(f"[train] {spec.model_id}: already in the models table, skipped", flush=True)
            continue
        kind = "robust" if spec.attack else "standard"
        print(f"[train] {spec.model_id}: {kind} {spec.arch}, {spec.epochs} epochs, {spec.num_workers} workers",
              flush=True)
        row = train_one(config, spec)
        append_rows(config.store_root, "models", to_table([row], MODELS_SCHEMA), key=f"{spec.model_id}/{row['digest']}")
        print(
            f"[train] {spec.model_id}: clean {row['clean_acc']:.4f}, adversarial {row['adv_acc']:.4f} "
            f"(eps {row['adv_eps']}), {row['seconds']:.0f}s",
            flush=True,
        )


def main(config: ExperimentConfig) -> None:
    from cluster.connect import connect
    from datasets.beton import read_info

    read_info(config.data.local("train"))  # a missing dataset fails here, before Ray starts
    config.writable("store", "storage_path")  # a missing or read-only one fails here too
    connect(config.ray.address, config.ray.num_cpus, verbose=config.ray.verbose)
    check_resources(config, "train")
    train_all(config)


def cli(argv: list[str] | None = None) -> None:
    run_entry_point(main, __doc__, argv)


if __name__ == "__main__":
    cli()
