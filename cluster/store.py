"""Committing to the store: one Parquet part file per batch, written to a hidden temp name and moved into
place. The root is a local path or a pyarrow filesystem URI (file://, s3://, gs://, hdfs://).

A part's name is a hash of its job ids, so a retried batch overwrites its own part instead of adding
duplicates; a rerun reads the committed job ids first and skips them. Readers ignore names starting with
'.' or '_', so a temp file is never read. On a local disk the move is an atomic rename; on object stores
it is a copy then delete, still never visible half-written. The driver is the only writer of `results`.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from robrep.store import filesystem


def part_name(job_ids: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(job_ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def commit_part(root: str, table_name: str, table: pa.Table, partition: dict[str, str], name: str) -> str:
    """Write `table` as <root>/<table_name>/<k=v>/.../<name>, atomically. Partition columns are dropped
    from the file; readers get them back from the folder names."""
    fs, base = filesystem(root)
    folder = "/".join([base, table_name, *(f"{k}={v}" for k, v in partition.items())])
    fs.create_dir(folder, recursive=True)
    table = table.drop_columns([k for k in partition if k in table.column_names])
    tmp, final = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp", f"{folder}/{name}"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, final)
    return final


def append_rows(root: str, table_name: str, table: pa.Table, key: str) -> str:
    """Commit a small table (models, train_metrics, failures) as one part named after `key`; committing
    the same key again replaces it."""
    name = f"part-{hashlib.sha256(key.encode()).hexdigest()[:20]}.parquet"
    return commit_part(root, table_name, table, {}, name)


def committed_job_ids(root: str, table_name: str = "results") -> set[str]:
    """Job ids already in the store (reads the `job_id` column only)."""
    fs, base = filesystem(root)
    folder = f"{base}/{table_name}"
    if fs.get_file_info(folder).type == pa.fs.FileType.NotFound:
        return set()
    dataset = pads.dataset(folder, filesystem=fs, format="parquet", partitioning="hive")
    return set(dataset.to_table(columns=["job_id"]).column("job_id").to_pylist())


def write_manifest(root: str, run_id: str, manifest: dict) -> str:
    """Written last, after every part of a run is committed."""
    fs, base = filesystem(root)
    folder = f"{base}/_manifests"
    fs.create_dir(folder, recursive=True)
    tmp, final = f"{folder}/.{run_id}.json.tmp", f"{folder}/{run_id}.json"
    with fs.open_output_stream(tmp) as out:
        out.write(json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
    fs.move(tmp, final)
    return final
