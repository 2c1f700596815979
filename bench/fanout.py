"""Benchmark: the Ray fan-out pool against the same batches in one process, and batching itself.

    .venv/bin/python bench/fanout.py [--targets 100] [--steps 50] [--batch 50]

Jobs: Eq. 4 inversions (noise and other-class starts) on the digits test set at 16 px for two small
CNNs. (a) The same packed batches run through robrep's pool (2 Ray actors x 1 CPU) and in one plain
process (2 threads); both start cold (models and images loaded on first use) and commit nothing.
(b) image-steps/s of one process at batch sizes 1, 8, 32 and 128.
Both are timed cold (first run: actors start, models and images load) and warm (the same batches
again on the same long-lived actors / process cache). The last line is warm pool jobs/s over warm
one-process jobs/s (target >= 0.9): the steady state that a run of thousands of jobs lives in.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.worker import run_batch  # noqa: E402
from datasets.beton import read_info  # noqa: E402
from jobs.build_dataset import build  # noqa: E402
from jobs.config import DataSpec, ExperimentConfig  # noqa: E402
from jobs.fanout import plan  # noqa: E402
from robrep.checkpoint import save_checkpoint  # noqa: E402
from robrep.core.config import from_dict  # noqa: E402
from robrep.fanout.plan import pack  # noqa: E402
from robrep.models import create_model  # noqa: E402
from robrep.store.commit import append_rows  # noqa: E402
from robrep.store.schema import MODELS_SCHEMA, now_utc, to_table  # noqa: E402


def setup(tmp: Path, targets: int, steps: int) -> ExperimentConfig:
    build(DataSpec(dir=str(tmp / "data")))
    info = read_info(tmp / "data" / "train.beton")
    for seed, model_id in enumerate(("a", "b")):
        torch.manual_seed(seed)
        model = create_model("small_cnn", 10, info["mean"], info["std"])
        save_checkpoint(tmp / model_id, model, {"model_id": model_id, "arch": "small_cnn", "num_classes": 10,
                                                "mean": info["mean"], "std": info["std"]})
        append_rows(tmp / "store", "models", to_table([{"model_id": model_id, "checkpoint": str(tmp / model_id),
                                                         "created_at": now_utc()}], MODELS_SCHEMA), key=model_id)
    return from_dict(ExperimentConfig, {
        "name": "bench", "store": str(tmp / "store"), "storage_path": str(tmp), "data": {"dir": str(tmp / "data")},
        "fanout": {"models": ["a", "b"], "indices": {"mode": "first", "n": targets},
                   "jobs": [{"kind": "invert", "inits": ["noise", "image"], "step_size": 0.1, "steps": steps}]},
    })


def one_process(batches, cache: dict | None = None) -> float:
    torch.set_num_threads(2)
    cache = {} if cache is None else cache
    start = time.perf_counter()
    for batch in batches:
        run_batch(batch, cache)
    return time.perf_counter() - start


def through_pool(batches) -> tuple[float, float]:
    """(cold seconds: actors started and caches filled inside the timing, warm seconds: a second run)."""
    import ray

    from cluster.connect import connect
    from cluster.pool import WorkerPool

    def fail(batch, error):
        raise error

    connect(None, num_cpus=2)
    times = []
    start = time.perf_counter()
    pool = WorkerPool(run_batch, workers=2, cpus_per_worker=1)
    for _ in range(2):
        pool.run(batches, max_in_flight=4, on_done=lambda batch, rows: None, on_error=fail, progress=False)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    pool.shutdown()
    ray.shutdown()
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = setup(Path(folder), args.targets, args.steps)
        jobs = plan(config)
        batches = pack(jobs, args.batch)
        cache: dict = {}
        single_cold = one_process(batches, cache)
        single = one_process(batches, cache)
        pool_cold, pooled = through_pool(batches)
        rates = {}
        for size in (1, 8, 32, 128):
            sample = pack(jobs, size)[: max(1, 128 // size)]
            seconds = one_process(sample, cache)
            rates[size] = sum(len(b) for b in sample) * args.steps / seconds
    print(f"{len(jobs)} jobs x {args.steps} steps in {len(batches)} batches of {args.batch}")
    print(f"cold (models and images loaded inside the timing): one process {len(jobs) / single_cold:.1f} jobs/s, "
          f"Ray pool {len(jobs) / pool_cold:.1f} jobs/s (actor start included), ratio {single_cold / pool_cold:.3f}")
    print(f"warm, one process (2 threads): {len(jobs) / single:.1f} jobs/s ({single:.1f}s)")
    print(f"warm, Ray pool (2 actors x 1 CPU): {len(jobs) / pooled:.1f} jobs/s ({pooled:.1f}s)")
    for size, rate in rates.items():
        print(f"batch {size:>3}: {rate:,.0f} image-steps/s")
    print(f"ratio: {single / pooled:.3f}")


if __name__ == "__main__":
    main()
