"""Fan representation experiments out over a pool of Ray workers; commit one row per result image.

    ray job submit --working-dir . -- python -m jobs.fanout --config jobs/configs/digits.yaml

Kinds (fanout.jobs): invert (Eq. 4, from noise, gray or an image of another class), invert_sweep (Fig. 4),
pairs (Sec. 2), visualize (Eq. 5), manipulate (4.2.1), interpolate (Eq. 6), top_activating (Fig. 8).
A rerun skips committed jobs; a failing job goes to the `failures` table and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from jobs.common import git_sha, run_entry_point
from jobs.config import CoordinateSpec, ExperimentConfig, FanoutSpec, IndexSpec, JobSpec
from robrep.errors import ConfigError, DataError
from robrep.experiments import JOB_KEYS
from robrep.store import FAILURES_SCHEMA, REPRESENTATIONS_SCHEMA, RESULTS_SCHEMA, now_utc, read_table, to_table


def job_id(spec: dict) -> str:
    canonical = json.dumps({k: spec[k] for k in JOB_KEYS}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def select_indices(spec: IndexSpec, labels: np.ndarray) -> list[int]:
    """The split's images the jobs use; DataError when one is out of range."""
    size = len(labels)
    if spec.mode == "list":
        bad = [i for i in spec.values if not 0 <= i < size]
        if bad:
            raise DataError(f"fanout.indices {bad[:5]} are out of range: the split has {size} images (0..{size - 1})")
        return list(spec.values)
    if spec.n > size or spec.n < 1:
        raise DataError(f"fanout.indices.n={spec.n} but the split has {size} images")
    if spec.mode == "first":
        return list(range(spec.n))
    rng = np.random.default_rng(spec.seed)
    if spec.mode == "random":
        return sorted(rng.choice(size, spec.n, replace=False).tolist())
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen += rng.choice(members, min(spec.n, len(members)), replace=False).tolist()
    return sorted(chosen)


def select_coordinates(spec: CoordinateSpec, dim: int) -> list[int]:
    """Coordinates of R; `top` gives -1..-n, resolved per start image by the worker (-1-r = r-th most active)."""
    if spec.mode == "list":
        bad = [c for c in spec.values if not 0 <= c < dim]
        if bad:
            raise ConfigError(f"coordinates {bad[:5]} out of range: the representation has {dim} coordinates")
        return list(spec.values)
    if spec.mode == "random":
        return sorted(np.random.default_rng(spec.seed).choice(dim, min(spec.n, dim), replace=False).tolist())
    return [-1 - r for r in range(spec.n)]


def other_class_source(labels: np.ndarray, target_index: int, rng_seed: int) -> int:
    """An image of a different class than the target, chosen deterministically from (seed, target)."""
    candidates = np.flatnonzero(labels != labels[target_index])
    return int(np.random.default_rng([rng_seed, target_index]).choice(candidates))


def _expand_block(block: JobSpec, indices: list[int], labels: np.ndarray, dim: int, seed: int) -> list[dict]:
    """The (target_index, source_index, init, coordinate, lam, eps) of every job of one block."""
    common = {"coordinate": -1, "lam": float("nan"), "eps": block.eps}
    other = {t: other_class_source(labels, t, seed) for t in indices}
    jobs = []
    if block.kind == "top_activating":
        base = {**common, "rng_seed": seed}
        if block.coordinates.mode == "top":
            raise ConfigError("top_activating ranks images for given coordinates: use coordinates mode list or random")
        return [{**base, "target_index": -1, "source_index": -1, "init": "none", "coordinate": c}
                for c in select_coordinates(block.coordinates, dim)]
    for t in indices:
        base = {**common, "rng_seed": seed * 1_000_003 + t}  # the noise start of image slot t
        if block.kind == "invert":
            for init in block.inits:
                jobs.append({**base, "target_index": t, "source_index": other[t] if init == "image" else -1,
                             "init": init})
        elif block.kind == "pairs":
            jobs.append({**base, "target_index": t, "source_index": other[t], "init": "image"})
        elif block.kind == "invert_sweep":
            jobs += [{**base, "target_index": t, "source_index": other[t], "init": "image", "eps": r}
                     for r in block.radii]
        elif block.kind == "interpolate":
            jobs += [{**base, "target_index": t, "source_index": other[t], "init": "interp", "lam": j / block.t}
                     for j in range(block.t + 1)]
        else:  # visualize, manipulate
            inits = ("image",) if block.kind == "manipulate" else block.inits
            for init in inits:
                if init == "gray" and t != indices[0]:
                    continue  # one gray start per coordinate is enough
                source = t if init == "image" else -1
                jobs += [{**base, "target_index": -1, "source_index": source, "init": init, "coordinate": c}
                         for c in select_coordinates(block.coordinates, dim)]
    return jobs


def expand(fan: FanoutSpec, data_source: str, models: dict[str, dict], labels: np.ndarray, dataset_path: str,
           image_shape: list[int]) -> list[dict]:
    """Every job of the config as a plain dict with a deterministic job_id."""
    jobs = []
    for block in fan.jobs:
        indices = select_indices(block.indices or fan.indices, labels)
        for name in block.models or fan.models:
            if name not in models:
                raise ConfigError(f"fanout.jobs {block.kind}: model {name!r} is not in fanout.models")
            model = models[name]
            for job in _expand_block(block, indices, labels, model["representation_dim"], fan.rng_seed):
                spec = {
                    **job, "kind": block.kind, "model_id": model["model_id"], "dataset": data_source,
                    "split": fan.split, "constraint": block.constraint, "step_size": block.step_size,
                    "steps": block.steps if block.kind != "top_activating" else 0,
                    "checkpoint": model["checkpoint"], "dataset_path": dataset_path, "image_shape": image_shape,
                    "model_robust": bool(model["robust"]), "model_eps": float(model["eps"] or 0.0),
                    "store_representation": block.store_representation, "k": block.k,
                }
                spec["job_id"] = job_id(spec)
                jobs.append(spec)
            if block.kind == "top_activating":  # the split's representations go to the store first
                spec = {**jobs[-1], "kind": "representations", "coordinate": -1, "constraint": "none", "eps": 0.0,
                        "step_size": 0.0, "rng_seed": 0}
                spec["job_id"] = job_id(spec)
                jobs.append(spec)
    unique = {job["job_id"]: job for job in jobs}  # two top_activating blocks share one representations job
    return list(unique.values())


def pack(jobs: list[dict], batch_size: int) -> list[list[dict]]:
    """Group compatible jobs (same model, kind and PGD settings) into batches of at most batch_size."""
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        key = (job["model_id"], job["kind"], job["constraint"], job["step_size"], job["steps"])
        groups.setdefault(key, []).append(job)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def run_batch(jobs: list[dict], cache: dict) -> list[dict]:
    """Runs inside a pool worker: one batched PGD loop (or one pass) for all jobs, rows for the store.
    The actor's cache keeps models, images and split representations across batches."""
    from datasets.beton import read_all, read_indices, read_info
    from robrep.checkpoint import load_checkpoint
    from robrep.experiments import (
        representation_rows,
        run_pgd_batch,
        run_top_activating,
        split_representations,
        timed_rows,
    )

    first = jobs[0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if first["checkpoint"] not in cache:
        cache[first["checkpoint"]] = load_checkpoint(first["checkpoint"], map_location=device)[0]
    model = cache[first["checkpoint"]]
    path = first["dataset_path"]
    if path not in cache:
        info = read_info(path)
        small = info["num_images"] * 3 * info["resolution"] ** 2 * 4 < 512 * 2**20
        cache[path] = (info["num_images"], read_all(path) if small else None)
    size, everything = cache[path]

    def get_images(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if everything is not None:
            return everything[0][indices], everything[1][indices]
        return read_indices(path, indices)

    if first["kind"] in ("top_activating", "representations"):
        key = ("representations", first["checkpoint"], path)
        if key not in cache:
            cache[key] = split_representations(model, get_images, size, device)
        if first["kind"] == "representations":
            return [row for job in jobs for row in representation_rows(job, *cache[key])]
        rows = timed_rows(run_top_activating, jobs, *cache[key], get_images)
    else:
        rows = timed_rows(run_pgd_batch, model, jobs, get_images, device)
    for row in rows:
        row.update(node=platform.node(), device=device)
    return rows


def resolve_models(config: ExperimentConfig, num_classes: int) -> dict[str, dict]:
    """fanout.models by model_id in the store, or by checkpoint folder; errors name what is wrong."""
    from robrep.checkpoint import read_meta
    from robrep.models import create_model

    table = read_table(config.store_root, "models")
    known = {row["model_id"]: row for row in table.to_dict("records")}
    models = {}
    for name in config.fanout.models:
        if name in known:
            row = dict(known[name])
        elif (Path(name) / "meta.json").is_file():
            meta = read_meta(name)
            row = {"model_id": meta.get("model_id") or Path(name).name, "checkpoint": str(Path(name).resolve()),
                   "robust": meta.get("robust"), "eps": meta.get("eps")}
        else:
            raise ConfigError(
                f"fanout.models: {name!r} is not in the store's models table at {config.store_root}/models "
                f"(known: {sorted(known)}) nor a checkpoint folder; train it with python -m jobs.train"
            )
        meta = read_meta(row["checkpoint"])  # CheckpointError if the files are gone
        if meta["num_classes"] != num_classes:
            raise ConfigError(f"model {name!r} has {meta['num_classes']} classes but the {config.fanout.split} "
                              f"split of {config.data.dir} has {num_classes}: they do not belong together")
        with torch.device("meta"):
            dim = create_model(meta["arch"], meta["num_classes"], meta["mean"], meta["std"],
                               **meta.get("arch_kwargs", {})).representation_dim
        models[name] = {**row, "representation_dim": dim, "robust": bool(row.get("robust")),
                        "eps": float(row.get("eps") or 0.0)}
    return models


def plan(config: ExperimentConfig) -> list[dict]:
    """Validate the fan-out against the store and data, and expand it: every error comes before any job runs."""
    from datasets.beton import read_info, read_labels

    if config.fanout is None:
        raise ConfigError("this config has no fanout section")
    path = config.data.path(config.fanout.split)
    info = read_info(path)
    models = resolve_models(config, info["num_classes"])
    return expand(config.fanout, config.data.source, models, read_labels(path), str(path),
                  [3, info["resolution"], info["resolution"]])


def store_images(root: str, jobs: list[dict]) -> int:
    """Commit the dataset images the jobs refer to (targets and sources) to the `images` table, once each,
    so figures can show them from the store alone. Returns how many were added."""
    from cluster.store import append_rows
    from datasets.beton import read_indices
    from robrep.store import IMAGES_SCHEMA, encode_png

    if not jobs:
        return 0
    first = jobs[0]
    have = read_table(root, "images", filters=[("dataset", "=", first["dataset"]), ("split", "=", first["split"])],
                      columns=["index"])
    wanted = sorted({i for j in jobs for i in (j["target_index"], j["source_index"]) if i >= 0} - set(have["index"]))
    if not wanted:
        return 0
    images, labels = read_indices(first["dataset_path"], wanted)
    rows = [{"dataset": first["dataset"], "split": first["split"], "index": i, "label": int(y),
             "image_png": encode_png(x)} for i, x, y in zip(wanted, images, labels, strict=True)]
    append_rows(root, "images", to_table(rows, IMAGES_SCHEMA), key=f"{first['dataset']}/{first['split']}/{wanted}")
    return len(rows)


def run_fanout(config: ExperimentConfig, jobs: list[dict] | None = None) -> dict:
    """Skip committed jobs, run the rest through the pool, commit parts, write the manifest."""
    from cluster.pool import run_pool
    from cluster.store import append_rows, commit_part, committed_job_ids, part_name, write_manifest

    fan, root = config.fanout, config.store_root
    jobs = plan(config) if jobs is None else jobs
    store_images(root, jobs)
    done = committed_job_ids(root) | committed_job_ids(root, "representations")
    todo = [j for j in jobs if j["job_id"] not in done]
    batches = pack(todo, fan.batch_size)
    print(f"[fanout] {len(jobs)} jobs, {len(jobs) - len(todo)} already in the store, {len(todo)} to run in "
          f"{len(batches)} batches; cost ~{sum(j['steps'] for j in todo):,} image-steps", flush=True)
    run_id, sha = uuid.uuid4().hex[:12], git_sha()
    failures: list[dict] = []

    def on_done(batch: list[dict], rows: list[dict]) -> None:
        for row in rows:
            row.update(run_id=run_id, git_sha=sha, created_at=now_utc())
        name = part_name([j["job_id"] for j in batch])
        if batch[0]["kind"] == "representations":
            table = to_table(rows, REPRESENTATIONS_SCHEMA)
            commit_part(root, "representations", table, {"model_id": batch[0]["model_id"]}, name)
        else:
            partition = {"kind": batch[0]["kind"], "model_id": batch[0]["model_id"]}
            commit_part(root, "results", to_table(rows, RESULTS_SCHEMA), partition, name)

    def on_error(batch: list[dict], error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"[:2000]
        failures.extend({"run_id": run_id, "job_id": j["job_id"], "kind": j["kind"], "model_id": j["model_id"],
                         "error": message, "created_at": now_utc()} for j in batch)

    start = time.time()
    if batches:
        run_pool(batches, run_batch, workers=fan.workers, cpus_per_worker=fan.cpus_per_worker,
                 gpus_per_worker=fan.gpus_per_worker, max_in_flight=fan.max_in_flight, on_done=on_done,
                 on_error=on_error, max_retries=fan.max_retries)
    if failures:
        append_rows(root, "failures", to_table(failures, FAILURES_SCHEMA), key=run_id)
        print(f"[fanout] {len(failures)} jobs failed; see {root}/failures (first: {failures[0]['error'][:300]})",
              flush=True)
    manifest = {"run_id": run_id, "git_sha": sha, "jobs": len(jobs), "skipped": len(jobs) - len(todo),
                "ran": len(todo) - len(failures), "failed": len(failures), "seconds": time.time() - start,
                "finished_at": now_utc().isoformat()}
    write_manifest(root, run_id, manifest)
    return manifest


def main(config: ExperimentConfig) -> None:
    from cluster.connect import connect

    jobs = plan(config)  # bad kinds, indices, models and data fail here, before Ray starts
    connect(config.ray.address, config.ray.num_cpus)
    manifest = run_fanout(config, jobs)
    print(f"[fanout] {manifest}", flush=True)
    if manifest["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    run_entry_point(main, __doc__)
