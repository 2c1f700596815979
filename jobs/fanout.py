"""Fan representation experiments out over a pool of Ray workers; commit one row per result image.

    ray job submit --working-dir . -- python -m jobs.fanout --config jobs/configs/digits.yaml

Kinds (fanout.jobs, robrep/fanout/kinds/): invert (Eq. 4), invert_sweep (Fig. 4), pairs (Sec. 2), visualize
(Eq. 5), manipulate (4.2.1), interpolate (Eq. 6), top_activating (Fig. 8), representations.
A rerun skips committed jobs; a failing job goes to the `failures` table and the run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
import uuid

from jobs.common import check_resources, git_sha, run_entry_point
from jobs.config import ExperimentConfig
from robrep.core.config import to_plain
from robrep.core.errors import ConfigError, DataError
from robrep.core.location import redact, redact_all
from robrep.fanout.job import Job
from robrep.fanout.plan import SplitRef, other_dataset, pack, plan_jobs, resolve_model
from robrep.fanout.registry import complete_rows, get_kind, run_settings, table_schema
from robrep.store import committed_job_ids, read_table
from robrep.store.commit import append_rows, commit_rows, write_manifest
from robrep.store.compact import compact
from robrep.store.lease import StoreLease
from robrep.store.schema import FAILURES_SCHEMA, IMAGES_SCHEMA, PARTITIONS, now_utc, to_table


def plan(config: ExperimentConfig) -> list[Job]:
    """Validate the fan-out against the store and data, and expand it: every error comes before any job runs."""
    if config.fanout is None:
        raise ConfigError("this config has no fanout section")
    split, labels = split_ref(config, config.fanout.split, config.data.source)
    models = {name: resolve_model(config.store_root, name, split.num_classes) for name in config.fanout.models}
    judge = config.fanout.judge
    judge = None if judge in (None, "none") else models.get(judge) or resolve_model(config.store_root, judge,
                                                                                     split.num_classes)
    names = sorted({other_dataset(b) for b in config.fanout.jobs if other_dataset(b)})
    rest = tuple(b for b in config.fanout.jobs if not other_dataset(b))
    if names and rest:  # every other error before a targets .beton is built
        plan_jobs(dataclasses.replace(config.fanout, jobs=rest), models, split, labels, judge)
    targets = {}
    for name in names:
        build_targets(config, name)
        targets[name] = split_ref(config, name, name)
        if targets[name][0].image_shape != split.image_shape:
            raise ConfigError(f"fanout.jobs: the images of dataset {name!r} (a block's other dataset) are "
                              f"{targets[name][0].image_shape[1]} px, the models' "
                              f"{split.image_shape[1]} px; build it at data.resolution")
    jobs = plan_jobs(config.fanout, models, split, labels, judge, targets)
    if config.fanout.compile:  # compiled workers share their artifacts through the store (robrep/compile_cache.py)
        jobs = [dataclasses.replace(job, compile_cache=config.store_root) for job in jobs]
    return jobs


def split_ref(config: ExperimentConfig, name: str, dataset: str):
    """(SplitRef, labels) of <data.dir>/<name>.beton, staged to this node from data.stage_from where set."""
    from datasets.beton import channels, fingerprint, read_info, read_labels

    path = config.data.local(name)
    info = read_info(path)
    ref = SplitRef(dataset, name, str(path), (channels(info), info["resolution"], info["resolution"]),
                   info["num_classes"],
                   fingerprint(path, info), config.data.stage_source(name))
    return ref, read_labels(path)


def build_targets(config: ExperimentConfig, name: str) -> None:
    """A block's other dataset, where datasets.sources builds one of that name (BUILT_IN_TARGETS), at
    data.resolution: written to <data.dir>/<name>.beton (and uploaded to data.stage_from) when missing. Other names
    must have been built with jobs.build_dataset."""
    from datasets.beton import write_beton
    from datasets.sources import BUILT_IN_TARGETS
    from datasets.stage import upload

    data = config.data
    if name not in BUILT_IN_TARGETS:
        return
    if data.stage_from:
        try:
            data.local(name)  # staged from data.stage_from, where another driver put it
            return
        except DataError:
            pass
    elif data.path(name).is_file():
        return
    if not data.path(name).is_file():
        with contextlib.redirect_stderr(io.StringIO()):  # FFCV's progress bar: a bad config's error stays one line
            write_beton(data.path(name), BUILT_IN_TARGETS[name](data.resolution), info={"split": name})
        print(f"[data] wrote {data.path(name)}: {name} at {data.resolution}px", flush=True)
    if data.stage_from:
        upload(data.path(name), data.stage_source(name))


def store_images(root: str, jobs: list[Job]) -> int:
    """Commit the dataset images the jobs refer to (targets and sources) to the `images` table, once each,
    so figures can show them from the store alone. Returns how many were added."""
    from datasets.beton import read_indices
    from robrep.images import encode_png

    added = 0
    for dataset, split, path in sorted({(j.dataset, j.split, j.dataset_path) for j in jobs}):
        same = [j for j in jobs if (j.dataset, j.split) == (dataset, split)]
        have = read_table(root, "images", filters=[("dataset", "=", dataset), ("split", "=", split)],
                          columns=["index"])
        wanted = sorted({i for j in same for i in (j.target_index, j.source_index) if i >= 0} - set(have["index"]))
        if not wanted:
            continue
        images, labels = read_indices(path, wanted)
        rows = [{"dataset": dataset, "split": split, "index": i, "label": int(y), "image_png": encode_png(x)}
                for i, x, y in zip(wanted, images, labels, strict=True)]
        append_rows(root, "images", to_table(rows, IMAGES_SCHEMA), key=f"{dataset}/{split}/{wanted}")
        added += len(rows)
    return added


def partition_filters(table: str, jobs: list[Job]) -> list[tuple]:
    """Filters on the partition columns of `table` that match the jobs' kinds and models: what a read about these
    jobs must open, and nothing else."""
    values = {"kind": {j.kind for j in jobs}, "model_id": {j.model_id for j in jobs}}
    return [(column, "in", sorted(values[column])) for column in PARTITIONS[table]]


def compact_where_needed(root: str, tables: list[str], jobs: list[Job], min_parts: int) -> None:
    """Compact the jobs' partition folders (and the images and failures tables) that hold min_parts small parts or
    more (fanout.compact_parts; 0: never). The caller holds the writer lease."""
    if not min_parts:
        return
    for table in [*tables, "images", "failures"]:
        filters = partition_filters(table, jobs) if table in PARTITIONS else None
        for done in compact(root, table, filters, min_parts=min_parts):
            print(f"[fanout] compacted {done.folder}: {done.parts_before} "
                  f"parts -> {done.parts_after} ({done.rows} rows, {done.dropped} superseded) in "
                  f"{done.seconds:.1f}s", flush=True)


def run_fanout(config: ExperimentConfig, jobs: list[Job] | None = None) -> dict:
    """Take the store's writer lease, skip committed jobs, run the rest through the pool, commit parts (and
    failures) batch by batch, write the manifest last."""
    fan, root = config.fanout, config.store_root
    jobs = plan(config) if jobs is None else jobs
    run_id = uuid.uuid4().hex[:12]
    with StoreLease(root, run_id, wait=fan.wait_for_lease):
        return _run(config, jobs, run_id)


def _run(config: ExperimentConfig, jobs: list[Job], run_id: str) -> dict:
    from cluster.pool import run_pool
    from cluster.worker import run_batch

    fan, root = config.fanout, config.store_root
    store_images(root, jobs)
    tables = sorted({get_kind(j.kind).table for j in jobs})
    compact_where_needed(root, tables, jobs, fan.compact_parts)
    done = set().union(*(committed_job_ids(root, table, partition_filters(table, jobs)) for table in tables))
    todo = [j for j in jobs if j.job_id not in done]
    batches = pack(todo, fan.batch_size)
    print(f"[fanout] {len(jobs)} jobs, {len(jobs) - len(todo)} already in the store, {len(todo)} to run in "
          f"{len(batches)} batches; cost ~{sum(j.get('steps', 0) for j in todo):,} image-steps", flush=True)
    sha = git_sha()
    failures: list[dict] = []

    def on_done(batch: list[Job], rows: list[dict]) -> None:
        for row in rows:
            row.update(run_id=run_id, git_sha=sha, created_at=now_utc())
        table = get_kind(batch[0].kind).table
        commit_rows(root, table, complete_rows(table, rows), [j.job_id for j in batch], schema=table_schema(table))

    def on_error(batch: list[Job], error: BaseException) -> None:
        """Committed at once, per batch: a run stopped later keeps the record."""
        message = f"{type(error).__name__}: {error}"[:2000]
        rows = [{"run_id": run_id, "job_id": j.job_id, "kind": j.kind, "model_id": j.model_id, "error": message,
                 "created_at": now_utc()} for j in batch]
        append_rows(root, "failures", to_table(rows, FAILURES_SCHEMA), key=f"{run_id}/{batch[0].job_id}")
        failures.extend(rows)

    start = time.time()
    if batches:
        run_pool(batches, run_batch, workers=fan.workers, cpus_per_worker=fan.cpus_per_worker,
                 gpus_per_worker=fan.gpus_per_worker, max_in_flight=fan.max_in_flight, on_done=on_done,
                 on_error=on_error, max_retries=fan.max_retries)
    compact_where_needed(root, tables, jobs, fan.compact_parts)
    if failures:
        print(f"[fanout] {len(failures)} jobs failed; see {redact(root)}/failures (first: "
              f"{failures[0]['error'][:300]})", flush=True)
    manifest = {"run_id": run_id, "git_sha": sha, "jobs": len(jobs), "skipped": len(jobs) - len(todo),
                "ran": len(todo) - len(failures), "failed": len(failures), "seconds": time.time() - start,
                "finished_at": now_utc().isoformat(), "config": redact_all(to_plain(config)),
                "settings": run_settings(jobs)}
    write_manifest(root, run_id, manifest)
    return manifest


def main(config: ExperimentConfig) -> None:
    from cluster.connect import connect

    config.writable("store")
    jobs = plan(config)  # bad kinds, indices, models and data fail here, before Ray starts
    run_id = uuid.uuid4().hex[:12]
    with StoreLease(config.store_root, run_id, wait=config.fanout.wait_for_lease):  # so does a second driver
        connect(config.ray.address, config.ray.num_cpus, verbose=config.ray.verbose)
        check_resources(config, "fanout")
        manifest = _run(config, jobs, run_id)
    print(f"[fanout] {manifest['ran']} ran, {manifest['skipped']} skipped, {manifest['failed']} failed in "
          f"{manifest['seconds']:.0f}s; manifest {manifest['run_id']}", flush=True)
    if manifest["failed"]:
        raise SystemExit(1)


def cli(argv: list[str] | None = None) -> None:
    run_entry_point(main, __doc__, argv)


if __name__ == "__main__":
    cli()
