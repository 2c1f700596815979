"""Committing to the store: one Parquet part file per batch, written to a hidden temp name and moved into
place. The root is a local path or a pyarrow filesystem URI (file://, s3://, gs://, hdfs://).

A part's name is a hash of its job ids, so a retried batch overwrites its own part instead of adding
duplicates; a rerun reads the committed job ids first and skips them. Readers ignore names starting with
'.' or '_', so a temp file is never read. Every file is written with robrep.core.location.write_atomic. Pure pyarrow:
no Ray.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from robrep.core.faults import fault_point
from robrep.core.location import filesystem, write_atomic
from robrep.core.names import check_name
from robrep.store.files import record_columns
from robrep.store.schema import PARTITIONS, TABLES, to_table, writer_options


def part_name(job_ids: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(job_ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def commit_part(root: str | Path, table_name: str, table: pa.Table, partition: dict[str, str], name: str,
                durable: bool = True) -> str:
    """Write `table` as <root>/<table_name>/<k=v>/.../<name>, atomically (robrep.core.location.write_atomic: durable
    on a local or NFS disk, one PUT on an object store). Partition columns are dropped from the file; readers get
    them back from the folder names."""
    fs, base = filesystem(root)
    folder = "/".join([base, table_name, *(f"{k}={check_name(v, k)}" for k, v in partition.items())])
    table = table.drop_columns([k for k in partition if k in table.column_names])
    record_columns(root, table_name, table.schema)  # before the part: no reader may miss one of its columns
    return write_atomic(fs, f"{folder}/{name}", lambda out: pq.write_table(table, out, **writer_options(table.schema)),
                        durable, fault=table_name)


def commit_rows(root: str | Path, table_name: str, rows: list[dict], job_ids: list[str], durable: bool = True,
                schema: pa.Schema | None = None) -> str:
    """Commit one batch's rows to a partitioned table (results, representations), named after its job ids.
    Every row of a batch shares the partition values (one kind, one model). `schema`: the table's with its kinds'
    parameter columns (robrep.fanout.registry.table_schema); default the table's own."""
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
    data = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    return write_atomic(fs, f"{base}/_manifests/{run_id}.json", lambda out: out.write(data))
