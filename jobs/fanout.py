"""Fan inversion jobs (Eq. 4) out over a pool of Ray workers and commit every result row to the store.

    ray job submit --working-dir . -- python -m jobs.fanout --config jobs/configs/digits.yaml

Targets are test images; sources are noise or images of another class. A rerun skips committed jobs.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
import uuid

import numpy as np
import torch

from jobs.common import git_sha, run_entry_point
from jobs.config import ExperimentConfig, FanoutSpec
from robrep.errors import ConfigError
from robrep.store import FAILURES_SCHEMA, RESULTS_SCHEMA, encode_png, now_utc, read_table, to_table

# The spec keys that define a job; job_id is their hash, so the same job always has the same id.
JOB_KEYS = (
    "kind", "model_id", "dataset", "split", "target_index", "source_index", "init", "rng_seed",
    "constraint", "eps", "step_size", "steps",
)


def job_id(spec: dict) -> str:
    canonical = json.dumps({k: spec[k] for k in JOB_KEYS}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def other_class_source(labels: np.ndarray, target_index: int, rng_seed: int) -> int:
    """A test image of a different class than the target, chosen deterministically from (seed, target)."""
    candidates = np.flatnonzero(labels != labels[target_index])
    return int(np.random.default_rng([rng_seed, target_index]).choice(candidates))


def expand(config: ExperimentConfig, models: dict[str, dict], labels: np.ndarray) -> list[dict]:
    """Every (model, target, init) combination as a plain-dict job spec with a deterministic job_id."""
    fan: FanoutSpec = config.fanout
    if fan.targets > len(labels):
        raise ConfigError(f"fanout.targets={fan.targets} but the {fan.split} split has only {len(labels)} images")
    dataset_path = str(config.data.path(fan.split))
    jobs = []
    for model_id in fan.models:
        model = models[model_id]
        for target in range(fan.targets):
            for init in fan.inits:
                source = other_class_source(labels, target, fan.rng_seed) if init == "image" else -1
                spec = {
                    "kind": "invert", "model_id": model_id, "dataset": config.data.source, "split": fan.split,
                    "target_index": target, "source_index": source, "init": init,
                    "rng_seed": fan.rng_seed * 1_000_003 + target, "constraint": fan.constraint, "eps": fan.eps,
                    "step_size": fan.step_size, "steps": fan.steps,
                    "checkpoint": model["checkpoint"], "dataset_path": dataset_path,
                    "model_robust": bool(model["robust"]), "model_eps": float(model["eps"]),
                }
                spec["job_id"] = job_id(spec)
                jobs.append(spec)
    return jobs


def pack(jobs: list[dict], batch_size: int) -> list[list[dict]]:
    """Group compatible jobs (same model, kind and PGD settings) into batches of at most batch_size."""
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        key = (job["model_id"], job["kind"], job["constraint"], job["eps"], job["step_size"], job["steps"])
        groups.setdefault(key, []).append(job)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def run_invert_batch(jobs: list[dict], cache: dict) -> list[dict]:
    """Runs inside a pool worker: one batched PGD loop for all jobs, one row per job."""
    from datasets.beton import read_all
    from robrep.checkpoint import load_checkpoint
    from robrep.experiments import invert, noise_image

    first = jobs[0]
    if first["checkpoint"] not in cache:
        cache[first["checkpoint"]] = load_checkpoint(first["checkpoint"])[0]
    if first["dataset_path"] not in cache:
        cache[first["dataset_path"]] = read_all(first["dataset_path"])
    model = cache[first["checkpoint"]]
    images, labels = cache[first["dataset_path"]]
    start = time.time()
    targets = images[[j["target_index"] for j in jobs]]
    x0 = torch.stack(
        [
            images[j["source_index"]] if j["init"] == "image" else noise_image(images.shape[1:], j["rng_seed"])
            for j in jobs
        ]
    )
    out = invert(model, targets, x0, eps=first["eps"], step_size=first["step_size"], steps=first["steps"])
    seconds = (time.time() - start) / len(jobs)
    rows = []
    for i, job in enumerate(jobs):
        row = {k: job[k] for k in (*JOB_KEYS, "job_id", "model_robust", "model_eps")}
        row.update(
            coordinate=-1, lam=float("nan"), activation=None, activation_rank=None,
            target_class=int(labels[job["target_index"]]),
            source_class=int(labels[job["source_index"]]) if job["source_index"] >= 0 else -1,
            image_png=encode_png(out["x"][i]), node=platform.node(), device="cpu", seconds=seconds,
            **{k: out[k][i].item() for k in ("rep_dist", "rep_dist_rel", "pix_dist_target", "pix_dist_source",
                                              "pred_class", "loss_final", "steps_taken")},
        )
        rows.append(row)
    return rows


def load_models(config: ExperimentConfig) -> dict[str, dict]:
    """The fan-out's models from the store's models table; ConfigError names any that is missing."""
    from robrep.checkpoint import read_meta

    table = read_table(config.store_root, "models")
    models = {row["model_id"]: row for row in table.to_dict("records")}
    for model_id in config.fanout.models:
        if model_id not in models:
            raise ConfigError(
                f"fanout.models: {model_id!r} is not in the store's models table at {config.store_root}/models "
                f"(known: {sorted(models)}); train it with python -m jobs.train"
            )
        read_meta(models[model_id]["checkpoint"])  # CheckpointError if the files are gone
    return models


def run_fanout(config: ExperimentConfig) -> dict:
    """Expand, skip committed jobs, run the rest through the pool, commit parts, write the manifest."""
    from cluster.pool import run_pool
    from cluster.store import commit_part, committed_job_ids, part_name, write_manifest
    from datasets.beton import read_all

    if config.fanout is None:
        raise ConfigError("this config has no fanout section")
    fan, root = config.fanout, config.store_root
    models = load_models(config)
    _, labels = read_all(config.data.path(fan.split))
    jobs = expand(config, models, labels.numpy())
    done = committed_job_ids(root)
    todo = [j for j in jobs if j["job_id"] not in done]
    batches = pack(todo, fan.batch_size)
    image_steps = sum(j["steps"] for j in todo)
    print(
        f"[fanout] {len(jobs)} jobs, {len(jobs) - len(todo)} already in the store, {len(todo)} to run "
        f"in {len(batches)} batches; cost ~{image_steps:,} image-steps",
        flush=True,
    )
    run_id, sha = uuid.uuid4().hex[:12], git_sha()
    failures: list[dict] = []

    def on_done(batch: list[dict], rows: list[dict]) -> None:
        for row in rows:
            row.update(run_id=run_id, git_sha=sha, created_at=now_utc())
        first = batch[0]
        partition = {"kind": first["kind"], "model_id": first["model_id"]}
        commit_part(root, "results", to_table(rows, RESULTS_SCHEMA), partition, part_name([j["job_id"] for j in batch]))

    def on_error(batch: list[dict], error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"
        print(f"[fanout] a batch of {len(batch)} jobs failed: {message}", flush=True)
        failures.extend(
            {"run_id": run_id, "job_id": j["job_id"], "kind": j["kind"], "model_id": j["model_id"],
             "error": message, "created_at": now_utc()} for j in batch
        )

    start = time.time()
    if batches:
        run_pool(
            batches, run_invert_batch, workers=fan.workers, cpus_per_worker=fan.cpus_per_worker,
            max_in_flight=fan.max_in_flight, on_done=on_done, on_error=on_error,
        )
    if failures:
        from cluster.store import append_rows

        append_rows(root, "failures", to_table(failures, FAILURES_SCHEMA), key=run_id)
    manifest = {
        "run_id": run_id, "git_sha": sha, "jobs": len(jobs), "skipped": len(jobs) - len(todo),
        "ran": len(todo) - len(failures), "failed": len(failures), "seconds": time.time() - start,
        "finished_at": now_utc().isoformat(),
    }
    write_manifest(root, run_id, manifest)
    return manifest


def main(config: ExperimentConfig) -> None:
    from cluster.connect import connect
    from datasets.beton import read_info

    read_info(config.data.path(config.fanout.split if config.fanout else "test"))
    if config.fanout is not None:
        load_models(config)  # bad model names fail before Ray starts
    connect(config.ray.address, config.ray.num_cpus)
    manifest = run_fanout(config)
    print(f"[fanout] {manifest}", flush=True)
    if manifest["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    run_entry_point(main, __doc__)
