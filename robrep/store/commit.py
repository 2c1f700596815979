"""Committing to the store: one Parquet part file per batch, written to a hidden temp name and moved into
place. The root is a local path or a pyarrow filesystem URI (file://, s3://, gs://, hdfs://).

A part's name is a hash of its job ids, so a retried batch overwrites its own part instead of adding
duplicates; a rerun reads the committed job ids first and skips them. Readers ignore names starting with
'.' or '_', so a temp file is never read. On a local disk the move is an atomic rename; on object stores
it is a copy then delete, still never visible half-written. Pure pyarrow: no Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from robrep.location import filesystem
from robrep.names import check_name
from robrep.store.schema import PARTITIONS, TABLES, to_table

_reached: dict[str, int] = {}


def fault_point(point: str) -> None:
    """Fault injection for the tests that kill a process mid-work: with ROBREP_FAULT=<point>:<n> set, the n-th
    time this process reaches <point> it is killed (SIGKILL), as a power loss or `kill -9` would. With
    ROBREP_FAULT_ONCE=<file> also set, only the first process to create that file dies (one Tune trial of many).
    Inert otherwise."""
    wanted = os.environ.get("ROBREP_FAULT", "")
    if not wanted.startswith(point + ":"):
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] != int(wanted.rsplit(":", 1)[1]):
        return
    if "ROBREP_FAULT_ONCE" in os.environ:
        try:
            os.close(os.open(os.environ["ROBREP_FAULT_ONCE"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def part_name(job_ids: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(job_ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_part(root: str | Path, table_name: str, table: pa.Table, partition: dict[str, str], name: str,
                durable: bool = True) -> str:
    """Write `table` as <root>/<table_name>/<k=v>/.../<name>, atomically. Partition columns are dropped
    from the file; readers get them back from the folder names.

    On a local or NFS disk, durable=True fsyncs the part before the rename and its folder after it, so a power
    loss leaves the old state or the new one, never a truncated part. Object stores make a PUT durable.
    """
    fs, base = filesystem(root)
    folder = "/".join([base, table_name, *(f"{k}={check_name(v, k)}" for k, v in partition.items())])
    table = table.drop_columns([k for k in partition if k in table.column_names])
    tmp, final = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp", f"{folder}/{name}"
    if not isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(folder, recursive=True)
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, final)
        return final
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    with open(tmp, "wb") as out:
        pq.write_table(table, out)
        if durable:
            out.flush()
            os.fsync(out.fileno())
    fault_point(f"{table_name}.before_rename")
    os.replace(tmp, final)
    fault_point(f"{table_name}.after_rename")
    if durable:
        _fsync_dir(folder)
        if created:  # the new folder's own entry
            _fsync_dir(os.path.dirname(folder))
    return final


def commit_rows(root: str | Path, table_name: str, rows: list[dict], job_ids: list[str], durable: bool = True,
                schema: pa.Schema | None = None) -> str:
    """Commit one batch's rows to a partitioned table (results, representations), named after its job ids.
    Every row of a batch shares the partition values (one kind, one model). `schema`: the table's with its kinds'
    parameter columns (robrep.kinds.table_schema); default the table's own."""
    partition = {column: rows[0][column] for column in PARTITIONS[table_name]}
    table = to_table(rows, schema or TABLES[table_name])
    return commit_part(root, table_name, table, partition, part_name(job_ids), durable)


def append_rows(root: str | Path, table_name: str, table: pa.Table, key: str) -> str:
    """Commit a small table (models, train_metrics, failures) as one part named after `key`; committing
    the same key again replaces it."""
    name = f"part-{hashlib.sha256(key.encode()).hexdigest()[:20]}.parquet"
    return commit_part(root, table_name, table, {}, name)


def write_manifest(root: str | Path, run_id: str, manifest: dict) -> str:
    """Written last, after every part of a run is committed."""
    fault_point("manifest.before")
    fs, base = filesystem(root)
    folder = f"{base}/_manifests"
    fs.create_dir(folder, recursive=True)
    tmp, final = f"{folder}/.{run_id}.json.tmp", f"{folder}/{run_id}.json"
    with fs.open_output_stream(tmp) as out:
        out.write(json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
    fs.move(tmp, final)
    return final

