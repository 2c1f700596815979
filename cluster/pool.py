"""A bounded pool of long-lived Ray actors that run batches of jobs.

Each actor keeps a cache across batches (models, datasets), so they load once per actor. The driver
keeps at most `max_in_flight` batches submitted, collects them with `ray.wait`, and hands each
result to `on_done` as it arrives. A batch whose actor dies is retried on a fresh actor; a batch
whose code raises goes to `on_error` and the run goes on.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable

import ray
import torch
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

BatchFn = Callable[[list, dict], list[dict]]  # (jobs, actor cache) -> rows


@ray.remote
class PoolWorker:
    def __init__(self, batch_fn: BatchFn, threads: int):
        torch.set_num_threads(threads)
        self._batch_fn = batch_fn
        self._cache: dict = {}

    def run(self, jobs: list) -> list[dict]:
        return self._batch_fn(jobs, self._cache)

    def pid(self) -> int:
        import os

        return os.getpid()


class Progress:
    """A progress bar of jobs: done, failed, rate and ETA (tqdm, on stderr, refreshed at most every 2 s)."""

    def __init__(self, total_jobs: int):
        from tqdm import tqdm

        self.failed = 0
        self.bar = tqdm(total=total_jobs, unit="job", desc="jobs", mininterval=2.0, file=sys.stderr)

    def update(self, done: int = 0, failed: int = 0) -> None:
        self.failed += failed
        if failed:
            self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(done + failed)

    def close(self) -> None:
        self.bar.close()


class WorkerPool:
    """Long-lived actors, kept across `run` calls so that their caches (models, images) stay warm."""

    def __init__(self, batch_fn: BatchFn, *, workers: int, cpus_per_worker: float, gpus_per_worker: float = 0.0):
        self.batch_fn, self.workers = batch_fn, workers
        self.cpus, self.gpus, self.threads = cpus_per_worker, gpus_per_worker, max(1, int(cpus_per_worker))
        self.actors = [self._new_actor() for _ in range(workers)]

    def _new_actor(self):
        return PoolWorker.options(num_cpus=self.cpus, num_gpus=self.gpus).remote(self.batch_fn, self.threads)

    def run(
        self,
        batches: list[list],
        *,
        max_in_flight: int,
        on_done: Callable[[list, list[dict]], None],
        on_error: Callable[[list, BaseException], None],
        max_retries: int = 3,
        progress: bool = True,
    ) -> None:
        """Run every batch, at most `max_in_flight` at a time, handing results to on_done as they arrive.

        A batch whose actor dies is retried on a fresh actor up to max_retries times. A batch that raises
        is split into single jobs and retried, so one bad job fails alone (on_error).
        """
        idle = deque(self.actors)
        queue = deque((batch, 0) for batch in batches)
        in_flight: dict = {}  # ObjectRef -> (batch, tries, actor)
        bar = Progress(sum(len(b) for b in batches)) if progress else None
        while queue or in_flight:
            while queue and idle and len(in_flight) < max_in_flight:
                batch, tries = queue.popleft()
                actor = idle.popleft()
                in_flight[actor.run.remote(batch)] = (batch, tries, actor)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            batch, tries, actor = in_flight.pop(ready[0])
            done = failed = 0
            try:
                rows = ray.get(ready[0])
            except (ActorDiedError, ActorUnavailableError, RayActorError) as e:
                self.actors.remove(actor)
                replacement = self._new_actor()
                self.actors.append(replacement)
                idle.append(replacement)
                if tries + 1 > max_retries:
                    on_error(batch, e)
                    failed = len(batch)
                else:
                    print(f"[fanout] a pool worker died ({type(e).__name__}); retrying its batch", flush=True)
                    queue.appendleft((batch, tries + 1))
            except RayTaskError as e:
                idle.append(actor)
                if len(batch) > 1:
                    queue.extend(([job], tries) for job in batch)
                else:
                    on_error(batch, e.cause if e.cause is not None else e)
                    failed = 1
            else:
                idle.append(actor)
                on_done(batch, rows)
                done = len(batch)
            if bar is not None and (done or failed):
                bar.update(done=done, failed=failed)
        if bar is not None:
            bar.close()

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def run_pool(
    batches: list[list],
    batch_fn: BatchFn,
    *,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float = 0.0,
    max_in_flight: int,
    on_done: Callable[[list, list[dict]], None],
    on_error: Callable[[list, BaseException], None],
    max_retries: int = 3,
) -> None:
    """Run every batch through a fresh WorkerPool of `workers` actors (see WorkerPool.run)."""
    pool = WorkerPool(batch_fn, workers=min(workers, len(batches)), cpus_per_worker=cpus_per_worker,
                      gpus_per_worker=gpus_per_worker)
    try:
        pool.run(batches, max_in_flight=max_in_flight, on_done=on_done, on_error=on_error, max_retries=max_retries)
    finally:
        pool.shutdown()
