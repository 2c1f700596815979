"""Committing to the store: one Parquet part file per batch, written to a temp name and renamed.

A part's name is a hash of its job ids, so a retried batch overwrites its own part instead of
adding duplicates; a rerun reads the committed job ids first and skips them. The driver is the only
writer, so a multi-node run needs no shared storage for the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

PARTITION_KEYS = ("kind", "model_id")


def part_name(job_ids: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(job_ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def commit_part(root: str | Path, table_name: str, table: pa.Table, partition: dict[str, str], name: str) -> Path:
    """Write `table` as <root>/<table_name>/<k=v>/.../<name>, atomically (temp file + rename).

    Partition columns are dropped from the file; readers get them back from the folder names.
    """
    folder = Path(root) / table_name
    for key, value in partition.items():
        folder = folder / f"{key}={value}"
    folder.mkdir(parents=True, exist_ok=True)
    table = table.drop_columns([k for k in partition if k in table.column_names])
    final = folder / name
    tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    return final


def append_rows(root: str | Path, table_name: str, table: pa.Table, key: str) -> Path:
    """Commit a small table (models, failures) as one part named after `key` (rewriting replaces it)."""
    name = f"part-{hashlib.sha256(key.encode()).hexdigest()[:20]}.parquet"
    return commit_part(root, table_name, table, {}, name)


def committed_job_ids(root: str | Path, table_name: str = "results") -> set[str]:
    """Job ids already in the store (read from the `job_id` column only)."""
    folder = Path(root) / table_name
    files = [str(p) for p in folder.rglob("*.parquet")] if folder.exists() else []
    if not files:
        return set()
    dataset = pads.dataset(files, format="parquet")
    return set(dataset.to_table(columns=["job_id"]).column("job_id").to_pylist())


def write_manifest(root: str | Path, run_id: str, manifest: dict) -> Path:
    """Written last, after every part of a run is committed."""
    folder = Path(root) / "_manifests"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{run_id}.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    final = folder / f"{run_id}.json"
    os.replace(tmp, final)
    return final
