"""Durable commits: the fan-out's jobs/s when every part is fsynced (file and folder, around the rename)
against the same run without fsync. Target: >= 0.95.

    .venv/bin/python bench/commit.py [--seconds 30]

Both sides run the same batches through the same warm pool of Ray actors and commit every batch to a
local store; they alternate, one pass each at a time, until each side has run for --seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import setup  # noqa: E402

from cluster.worker import run_batch  # noqa: E402
from jobs.fanout import plan  # noqa: E402
from robrep.fanout.plan import pack  # noqa: E402
from robrep.fanout.registry import get_kind  # noqa: E402
from robrep.store.commit import commit_rows  # noqa: E402


def main() -> None:
    import ray

    from cluster.connect import connect
    from cluster.pool import WorkerPool

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0, help="per side")
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10, help="jobs per part file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        config = setup(tmp, args.targets, args.steps)
        batches = pack(plan(config), args.batch)
        connect(None, num_cpus=2)
        pool = WorkerPool(run_batch, workers=2, cpus_per_worker=1)

        def fail(batch, error):
            raise error

        pool.run(batches, max_in_flight=4, on_done=lambda b, r: None, on_error=fail, progress=False)  # warm up
        spent, jobs, parts = {True: 0.0, False: 0.0}, {True: 0, False: 0}, {True: 0, False: 0}
        run = 0
        while min(spent.values()) < args.seconds:
            for durable in (True, False):
                store = tmp / f"store-{run}-{durable}"

                def commit(batch, rows, durable=durable, store=store):
                    commit_rows(store, get_kind(batch[0].kind).table, rows, [j.job_id for j in batch], durable)
                    parts[durable] += 1

                start = time.perf_counter()
                pool.run(batches, max_in_flight=4, on_done=commit, on_error=fail, progress=False)
                spent[durable] += time.perf_counter() - start
                jobs[durable] += sum(len(b) for b in batches)
            run += 1
        pool.shutdown()
        ray.shutdown()
    rate = {d: jobs[d] / spent[d] for d in spent}
    print(f"{run} passes per side of {sum(len(b) for b in batches)} jobs x {args.steps} steps, "
          f"{len(batches)} parts of {args.batch} jobs each pass")
    print(f"durable (fsync part + folder): {rate[True]:.1f} jobs/s, {parts[True] / spent[True]:.1f} parts/s "
          f"over {spent[True]:.1f}s")
    print(f"no fsync:                      {rate[False]:.1f} jobs/s, {parts[False] / spent[False]:.1f} parts/s "
          f"over {spent[False]:.1f}s")
    print(f"ratio: {rate[True] / rate[False]:.3f}")


if __name__ == "__main__":
    main()
