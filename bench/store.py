"""The store at scale: a store grown through the fan-out's commit path (durable parts of 50 rows, 32 px images, rows
as the fan-out fills them, every built-in kind over two models), then the reads a fan-out and a researcher make,
before and after `jobs.store compact`; then grown to 1e6 rows and read again.

    .venv/bin/python bench/store.py [--parts 10000] [--million] [--seconds 30]

Figures, each the median of repeats (the committed check: repeated for --seconds per side):
  committed check   the fan-out's resume decision: committed_job_ids of every folder its jobs name
  one partition     load_results(one kind, one model, 7 columns)
  whole store       load_results(7 columns)
  metadata          load_results() (every column but image_png and representation), in a fresh process: s, peak RSS
  check             python -m jobs.store check, as a process (imports included)
Growth: the committed check as the store passes 1/100, 1/10 and all of --parts.
Targets at 10,000 parts after compaction: committed check <= 1 s, one partition <= 0.1 s, whole store <= 1 s; before
compaction one partition <= 1 s; 1e6 rows' metadata <= 10 s and <= 4 GB. Ends `ratio: <uncompacted / compacted time of
the committed check>`.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from robrep.fanout.registry import KINDS, complete_rows, table_schema  # noqa: E402
from robrep.images import encode_png  # noqa: E402
from robrep.store import committed_job_ids, load_results  # noqa: E402
from robrep.store.commit import commit_rows  # noqa: E402
from robrep.store.compact import compact_store  # noqa: E402
from robrep.store.schema import now_utc  # noqa: E402

ROWS = 50  # per part, as a fan-out batch commits
MODELS = ("cifar_standard", "cifar_robust")
KIND_NAMES = [k.name for k in KINDS.values() if k.table == "results"]
SEVEN = ["job_id", "kind", "model_id", "init", "eps", "rep_dist_rel", "pix_dist_target"]


def grower(root: Path, start: int):
    """Commit parts start, start+1, ... (round robin over every kind and model) through the commit path."""
    rng = np.random.default_rng(start)
    pngs = [encode_png(torch.from_numpy(rng.random((3, 32, 32), dtype=np.float32))) for _ in range(256)]  # ~3 KB
    schema = table_schema("results")
    folders = [(k, m) for k in KIND_NAMES for m in MODELS]

    def commit(p: int) -> None:
        kind, model = folders[p % len(folders)]
        ids = [hashlib.sha256(f"{p}/{i}".encode()).hexdigest()[:24] for i in range(ROWS)]
        stamp = now_utc()
        rows = [{"run_id": f"run{p // 1000}", "job_id": job, "kind": kind, "model_id": model,
                 "model_robust": model.endswith("robust"), "model_eps": 3.0, "dataset": "cifar10", "split": "test",
                 "target_index": (p * ROWS + i) % 10_000, "source_index": -1, "init": ("noise", "image")[i % 2],
                 "rng_seed": p * ROWS + i, "constraint": "l2", "eps": 1000.0, "step_size": 0.1, "steps": 200,
                 "rep_dist": float(rng.random()), "rep_dist_rel": float(rng.random()),
                 "pix_dist_target": float(rng.random() * 10), "pix_dist_source": float(rng.random() * 10),
                 "pred_class": i % 10, "target_class": i % 10, "source_class": -1, "steps_taken": 200,
                 "loss_final": float(rng.random()), "image_png": pngs[(p + i) % len(pngs)], "node": "node-1",
                 "device": "cuda:0", "seconds": 0.5, "git_sha": "0123abc", "created_at": stamp,
                 "model_digest": "d" * 32, "dataset_fingerprint": "f" * 32, "precision": "fp32",
                 "judge_model_id": MODELS[0], "judge_pred": i % 10, "in_distribution": True}
                for i, job in enumerate(ids)]
        commit_rows(root, "results", complete_rows("results", rows), ids, durable=True, schema=schema)

    return commit


def timed(fn, repeats: int = 3, seconds: float = 0.0) -> tuple[float, object]:
    """Median wall time of fn over `repeats` runs (or as many as fill `seconds`), and its last result."""
    times, out, spent = [], None, 0.0
    while len(times) < repeats or spent < seconds:
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times), out


def committed(root: Path) -> set[str]:
    """The fan-out's resume decision for jobs of every kind and model (jobs.fanout.partition_filters)."""
    return committed_job_ids(root, "results", [("kind", "in", KIND_NAMES), ("model_id", "in", list(MODELS))])


def metadata_in_a_process(root: Path) -> tuple[float, float, int]:
    """load_results() in a fresh process: (seconds, peak RSS GB, rows)."""
    # Peak RSS from VmHWM: this process's own, not ru_maxrss (which a child inherits from its parent at fork).
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from robrep.store import load_results; "
            "t = time.perf_counter(); f = load_results(sys.argv[1]); s = time.perf_counter() - t; "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print(s, int(hwm) / 2**20, len(f))")
    out = subprocess.run([sys.executable, "-c", code, str(root), str(REPO)], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def check_process(root: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jobs.store", "check", "--store", str(root)], cwd=REPO, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def measure(root: Path, label: str, seconds: float) -> dict:
    fig = {}
    fig["committed"], ids = timed(lambda: committed(root), seconds=seconds)
    fig["one"], one = timed(lambda: load_results(root, [("kind", "=", "invert"), ("model_id", "=", MODELS[1])],
                                                 SEVEN), repeats=5)
    fig["whole"], whole = timed(lambda: load_results(root, columns=SEVEN))
    fig["meta_s"], fig["meta_gb"], rows = metadata_in_a_process(root)
    fig["check"] = check_process(root)
    files = len(list((root / "results").rglob("part-*.parquet")))
    print(f"{label}: {files} files, {len(ids)} rows | committed check {fig['committed']:.3f}s | one partition "
          f"({len(one)} rows) {fig['one']:.3f}s | whole store 7 columns ({len(whole)} rows) {fig['whole']:.3f}s | "
          f"metadata ({rows} rows) {fig['meta_s']:.2f}s {fig['meta_gb']:.2f} GB | jobs.store check {fig['check']:.1f}s",
          flush=True)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", type=int, default=10_000)
    parser.add_argument("--million", action=argparse.BooleanOptionalAction, default=True,
                        help="then grow to 1e6 rows (2 x 10,000 parts) and read its metadata")
    parser.add_argument("--seconds", type=float, default=30.0, help="of committed checks per side")
    args = parser.parse_args()
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=REPO / "build") as folder:
        root = Path(folder) / "store"
        commit = grower(root, 0)
        start, marks = time.perf_counter(), sorted({max(1, args.parts // 100), max(1, args.parts // 10), args.parts})
        done = 0
        for mark in marks:
            for p in range(done, mark):
                commit(p)
            done = mark
            seconds, ids = timed(lambda: committed(root))
            print(f"growth: {mark} parts ({mark * ROWS} rows): committed check {seconds:.3f}s "
                  f"({len(ids)} ids); {time.perf_counter() - start:.0f}s of commits so far", flush=True)
        grown = time.perf_counter() - start
        print(f"grew {args.parts} parts through the commit path in {grown:.0f}s "
              f"({args.parts / grown:.0f} parts/s, durable)", flush=True)
        size = sum(p.stat().st_size for p in (root / "results").rglob("*.parquet"))
        print(f"on disk: {size / 2**30:.2f} GB ({size / (args.parts * ROWS):.0f} bytes per row)")
        before = measure(root, "before compaction", args.seconds)
        seconds, compacted = timed(lambda: compact_store(root), repeats=1)
        print(f"jobs.store compact: {len(compacted)} folders in {seconds:.1f}s", flush=True)
        after = measure(root, "after compaction", args.seconds)
        if args.million:
            commit = grower(root, args.parts)
            start = time.perf_counter()
            for p in range(args.parts, 2 * args.parts):
                commit(p)
            print(f"grew {args.parts} more parts in {time.perf_counter() - start:.0f}s", flush=True)
            measure(root, "1e6 rows, before compaction", 0.0)
            seconds, _ = timed(lambda: compact_store(root), repeats=1)
            print(f"jobs.store compact: {seconds:.1f}s", flush=True)
            measure(root, "1e6 rows, after compaction", 0.0)
    print(f"targets at {args.parts} parts: after compaction committed check {after['committed']:.3f}s (<= 1), "
          f"one partition {after['one']:.3f}s (<= 0.1), whole store {after['whole']:.3f}s (<= 1); before "
          f"compaction one partition {before['one']:.3f}s (<= 1)")
    print(f"bench wall time {time.perf_counter() - wall:.0f}s")
    print(f"ratio: {before['committed'] / after['committed']:.2f}")


if __name__ == "__main__":
    main()
