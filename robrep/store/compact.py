"""Compaction: a partition's many small parts rewritten as a few files of bounded size, with row groups sized for
reading, one row per row key (the latest). Run by its one writer (python -m jobs.store compact, or the fan-out when
a partition passes fanout.compact_parts), under the store's lease.

Order, so that a kill at any point leaves a store that reads the same rows: (1) every new file is written and made
durable (robrep.core.location.write_atomic; a name derived from its row keys, so a rerun rewrites the same names);
(2) only then are the replaced parts deleted, one by one. Between the two, a row is on disk twice and readers return
it once (the row key); a kill before (1) ends leaves only hidden temp files, removed by the next compaction.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from robrep.core.faults import fault_point
from robrep.core.location import filesystem, fsync_folder, write_atomic
from robrep.store.files import (
    SCHEMA_FILE,
    TableScan,
    partition_folders,
    quarantine,
    record_columns,
    recorded_schema,
    validate,
)
from robrep.store.schema import PARTITIONS, ROW_KEYS, TABLES, writer_options

FILE_BYTES = 128 << 20  # a compacted file holds about this much (on disk)
ROW_GROUP_BYTES = 32 << 20  # and its row groups about this much (in memory): a read's unit


@dataclass
class Compacted:
    """What one partition's compaction did."""

    folder: str  # within the store: results/kind=invert/model_id=m
    parts_before: int
    parts_after: int
    rewritten: int  # parts replaced
    rows: int  # rows in the new files
    dropped: int  # rows superseded by a later one of the same key
    seconds: float


def folder_parts(fs: pafs.FileSystem, folder: str) -> TableScan:
    """The part files (and hidden temp files) directly in one leaf folder."""
    scan = TableScan(folder)
    for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        if info.type != pafs.FileType.File or info.base_name == SCHEMA_FILE:
            continue
        if info.base_name.startswith("."):
            scan.temporary.append(info.path)
        elif info.base_name.startswith("part-") and info.base_name.endswith(".parquet"):
            scan.parts.append(info.path)
            scan.sizes[info.path] = info.size
        else:
            scan.damaged.append((info.path, "not a part file of this table"))
    scan.parts.sort()
    return scan


def compact(root: str | Path, table: str, filters: list | None = None, min_parts: int = 2,
            file_bytes: int = FILE_BYTES, row_group_bytes: int = ROW_GROUP_BYTES, durable: bool = True
            ) -> list[Compacted]:
    """Compact every partition folder of `table` (those `filters` allow on partition columns) that holds at least
    `min_parts` small parts (under half of file_bytes). The caller holds the store's writer lease."""
    record_columns(root, table)  # every column the parts have, so the new files have them all
    schema = recorded_schema(root, table)
    done = []
    for folder in partition_folders(root, table, filters):
        result = compact_folder(root, table, folder, schema, min_parts, file_bytes, row_group_bytes, durable)
        if result is not None:
            done.append(result)
    return done


def compact_folder(root: str | Path, table: str, folder: str, schema: pa.Schema, min_parts: int = 2,
                   file_bytes: int = FILE_BYTES, row_group_bytes: int = ROW_GROUP_BYTES, durable: bool = True
                   ) -> Compacted | None:
    """Compact one leaf folder (see compact); None when it has fewer than min_parts small parts and no row twice."""
    start = time.perf_counter()
    fs, base = filesystem(root)
    scan = folder_parts(fs, folder)
    if sum(scan.sizes[p] < file_bytes // 2 for p in scan.parts) < max(min_parts, 2):
        return None
    validate(root, table, scan)  # drops damaged parts from scan.parts
    for path, reason in scan.damaged:
        quarantine(root, path, reason)
    small = {p for p in scan.parts if scan.sizes[p] < file_bytes // 2}
    keys = [k for k in ROW_KEYS.get(table, ()) if k not in PARTITIONS.get(table, ())]
    rows = _row_keys(fs, scan.parts, schema, keys)
    keep = rows.sort_values(["created_at", "file", "row"], kind="stable").drop_duplicates(keys, keep="last") \
        if keys else rows
    kept = keep.groupby("file")["row"].apply(sorted).to_dict()
    dropped = {scan.parts[f] for f, n in rows.groupby("file").size().items() if len(kept.get(f, ())) < n}
    rewrite = [p for p in scan.parts if p in small | dropped]
    if len(rewrite) < 2 and not dropped:
        return None
    outputs = _plan(scan, rewrite, kept, file_bytes)
    names = []
    for segments in outputs:
        name = _name(segments, scan, rows, keys)
        names.append(f"{folder}/{name}")
        write_atomic(fs, names[-1], lambda out, s=segments: _write(fs, out, s, schema, row_group_bytes), durable,
                     fault="compact")
    fault_point("compact.before_delete")
    for path in rewrite:
        if path not in names:  # a new file may carry the name of one it replaces (the same rows): keep it
            fs.delete_file(path)
            fault_point("compact.deleted")
    for path in scan.temporary:  # of commits or compactions killed before their rename: the lease holder's alone
        fs.delete_file(path)
    if durable and isinstance(fs, pafs.LocalFileSystem):
        fsync_folder(folder)
    after = len(scan.parts) - len(rewrite) + len(set(names))
    return Compacted(folder[len(base) + 1:], len(scan.parts), after, len(rewrite),
                     int(sum(len(v) for f, v in kept.items() if scan.parts[f] in rewrite)),
                     len(rows) - len(keep), time.perf_counter() - start)


def _read(fs: pafs.FileSystem, path: str, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """One part with the table's schema: columns it lacks (written before they existed) as nulls."""
    return pads.dataset([path], schema=schema, filesystem=fs, format="parquet").to_table(columns=columns)


def _row_keys(fs: pafs.FileSystem, parts: list[str], schema: pa.Schema, keys: list[str]) -> pd.DataFrame:
    """(file, row, created_at, *keys) of every row of the parts: what decides which row of a key stays."""
    frames = []
    for f, path in enumerate(parts):
        columns = [*keys, "created_at"] if "created_at" in schema.names else keys
        frame = _read(fs, path, schema, columns).to_pandas() if columns else \
            pd.DataFrame(index=range(pq.read_metadata(path, filesystem=fs).num_rows))
        frames.append(frame.assign(file=f, row=range(len(frame))))
    rows = pd.concat(frames, ignore_index=True)
    if "created_at" not in rows.columns:
        rows["created_at"] = 0
    return rows


def _plan(scan: TableScan, rewrite: list[str], kept: dict[int, list[int]], file_bytes: int
          ) -> list[list[tuple[str, list[int]]]]:
    """The new files: each a list of (part, its rows to keep), filled to about file_bytes (estimated from the
    parts' sizes per row)."""
    outputs, current, size = [], [], 0.0
    for path in rewrite:
        f = scan.parts.index(path)
        rows = kept.get(f, [])
        per_row = scan.sizes[path] / max(1, scan.rows.get(path, len(rows)))
        while rows:
            room = max(1, int((file_bytes - size) // max(per_row, 1.0)))
            take, rows = rows[:room], rows[room:]
            current.append((path, take))
            size += per_row * len(take)
            if size >= file_bytes:
                outputs.append(current)
                current, size = [], 0.0
    if current:
        outputs.append(current)
    return outputs


def _name(segments: list[tuple[str, list[int]]], scan: TableScan, rows: pd.DataFrame, keys: list[str]) -> str:
    """part-<hash of the new file's row keys>: the same rows give the same name, on a rerun too."""
    digest = hashlib.sha256()
    by_file = dict(tuple(rows.groupby("file")))
    for path, taken in segments:
        if keys:
            frame = by_file[scan.parts.index(path)].set_index("row").loc[taken, keys]
            digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        else:
            digest.update(f"{path.rsplit('/', 1)[1]}:{taken}".encode())
    return f"part-{digest.hexdigest()[:20]}.parquet"


def _write(fs: pafs.FileSystem, out, segments: list[tuple[str, list[int]]], schema: pa.Schema,
           row_group_bytes: int) -> None:
    """Stream the kept rows of the segments into one Parquet file, a row group per row_group_bytes."""
    writer = pq.ParquetWriter(out, schema, **writer_options(schema))
    buffer, size = [], 0
    for path, rows in segments:
        piece = _read(fs, path, schema).take(rows)
        buffer.append(piece)
        size += piece.nbytes
        if size >= row_group_bytes:
            group = pa.concat_tables(buffer)
            writer.write_table(group, row_group_size=len(group))
            buffer, size = [], 0
    if buffer:
        group = pa.concat_tables(buffer)
        writer.write_table(group, row_group_size=len(group))
    writer.close()


def compact_store(root: str | Path, min_parts: int = 2, durable: bool = True) -> list[Compacted]:
    """Compact every table of the store (python -m jobs.store compact)."""
    return [c for table in TABLES for c in compact(root, table, min_parts=min_parts, durable=durable)]
