"""The files of a store table: listing them with partition pruning, the table's recorded schema, checking footers,
and the quarantine. Reads go through here so that a filter on a partition column (kind, model_id) opens only the
folders it names, and no footer is opened before the data itself is read.

Layout: <root>/<table>/<col>=<value>/.../part-<hash>.parquet, and for tables whose parts may add columns (results:
each kind's parameters) <root>/<table>/_common_metadata, a Parquet file with no rows whose schema is every column
the table's parts have (the Hive/Spark convention; pyarrow, DuckDB and Polars skip names starting with '_').
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from robrep.core.location import filesystem, redact, write_atomic
from robrep.store.schema import PARTITIONS, QUARANTINE, TABLES

EXTENSIBLE = ("results",)  # tables whose parts may carry more columns: the parameters their kinds declare
SCHEMA_FILE = "_common_metadata"
_PRUNABLE = ("=", "==", "in")


@dataclass
class TableScan:
    """The files of one table (or of the partitions a filter names): part files, and files that must not be
    read (why), and hidden temp files of an unfinished or killed commit."""

    folder: str
    parts: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes per part
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    temporary: list[str] = field(default_factory=list)
    extra: dict[str, pa.DataType] = field(default_factory=dict)  # columns of kinds' parameters (validated scans)
    rows: dict[str, int] = field(default_factory=dict)  # rows per part (validated scans: from the footers)


def file_schema(table: str) -> pa.Schema:
    """The columns a part file of `table` has (its partition columns live in folder names)."""
    partitions = PARTITIONS.get(table, ())
    return pa.schema([f for f in TABLES[table] if f.name not in partitions])


def _allowed(filters: list | None) -> dict[str, set[str]]:
    """Partition column -> the values a conjunctive filter allows ('=' / 'in'); other filters prune nothing."""
    if not filters or not all(isinstance(f, tuple | list) and len(f) == 3 and isinstance(f[0], str)
                              for f in filters):
        return {}  # empty, or the disjunctive form [[...], [...]]: pyarrow applies it, nothing is pruned
    allowed: dict[str, set[str]] = {}
    for column, op, value in filters:
        if op not in _PRUNABLE:
            continue
        values = {str(v) for v in value} if op == "in" else {str(value)}
        allowed[column] = allowed[column] & values if column in allowed else values
    return allowed


def partition_folders(root: str | Path, table: str, filters: list | None = None) -> list[str]:
    """The leaf folders of a table that a filter on its partition columns can match, listing only those:
    kind=invert opens kind=invert/ alone. A table without partitions is its own one folder."""
    return _walk(root, table, filters)[0]


def _walk(root: str | Path, table: str, filters: list | None) -> tuple[list[str], list[str]]:
    """(leaf folders the filter can match, files found on the way above the leaves: strays)."""
    fs, base = filesystem(root)
    folders, strays = [f"{base}/{table}"], []
    if fs.get_file_info(folders[0]).type == pafs.FileType.NotFound:
        return [], []
    allowed = _allowed(filters)
    for column in PARTITIONS.get(table, ()):
        wanted = allowed.get(column)
        if wanted is not None and len(wanted) <= 64:  # a short list: look each up, list nothing
            candidates = [f"{folder}/{column}={v}" for folder in folders for v in sorted(wanted)]
            folders = [i.path for i in fs.get_file_info(candidates) if i.type == pafs.FileType.Directory]
            continue
        children = []
        for folder in folders:
            for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                if info.type == pafs.FileType.Directory and info.base_name.startswith(f"{column}="):
                    if wanted is None or info.base_name.split("=", 1)[1] in wanted:
                        children.append(info.path)
                elif not info.base_name.startswith((".", "_")):  # _common_metadata, or a reader's own files
                    strays.append(info.path)
        folders = children
    return sorted(folders), strays


def list_table(root: str | Path, table: str, filters: list | None = None) -> TableScan:
    """The files a read of `table` with `filters` must open: part files of the folders the filter can match, by
    name alone (no footer is opened). A file that is not named as a part, or not in a leaf folder, is listed as
    damaged."""
    fs, base = filesystem(root)
    scan = TableScan(f"{base}/{table}")
    folders, strays = _walk(root, table, filters)
    scan.damaged += [(path, "not a part file of this table") for path in strays]
    for folder in folders:
        for info in fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
            if info.type != pafs.FileType.File:
                continue
            if info.base_name.startswith("."):
                scan.temporary.append(info.path)
            elif info.base_name == SCHEMA_FILE and folder == scan.folder:
                continue
            elif "/" in info.path[len(folder) + 1:] or not (info.base_name.startswith("part-")
                                                              and info.base_name.endswith(".parquet")):
                scan.damaged.append((info.path, "not a part file of this table"))
            else:
                scan.parts.append(info.path)
                scan.sizes[info.path] = info.size
    scan.parts.sort()
    return scan


def validate(root: str | Path, table: str, scan: TableScan) -> TableScan:
    """Open every part's footer: a part whose footer does not read, or whose columns are not the table's (a foreign
    or mistyped column), moves to `damaged`. An EXTENSIBLE table's parts may add columns, each with one type
    across the table. Fills `extra` and `rows`. Run by check, repair, compact and by a read that failed."""
    fs, _ = filesystem(root)
    expected = file_schema(table)
    good = []
    for path in scan.parts:
        try:
            meta = pq.read_metadata(path, filesystem=fs)
            schema = meta.schema.to_arrow_schema()
        except (pa.ArrowInvalid, OSError) as e:
            scan.damaged.append((path, f"unreadable: {e}"))
            continue
        extra = {f.name: f.type for f in schema if f.name not in expected.names and table in EXTENSIBLE}
        strangers = [f.name for f in schema if (f.name in expected.names and expected.field(f.name).type != f.type)
                     or (f.name not in expected.names and f.name not in extra)
                     or f.type != scan.extra.get(f.name, f.type)]
        if strangers:
            scan.damaged.append((path, f"columns {strangers[:5]} are not this table's"))
            continue
        scan.extra.update(extra)
        scan.rows[path] = meta.num_rows
        good.append(path)
    scan.parts = good
    return scan


def recorded_schema(root: str | Path, table: str) -> pa.Schema | None:
    """The schema in <table>/_common_metadata (every column the table's parts have), or None where there is none
    (a table that adds no columns, or a store written before the record existed)."""
    if table not in EXTENSIBLE:
        return file_schema(table)
    fs, base = filesystem(root)
    try:
        return pq.read_schema(f"{base}/{table}/{SCHEMA_FILE}", filesystem=fs)
    except FileNotFoundError:
        return None
    except (pa.ArrowInvalid, OSError) as e:
        print(f"[store] warning: {redact(base)}/{table}/{SCHEMA_FILE} does not read ({e}); the parts' footers "
              "are read instead (python -m jobs.store repair writes it again)", file=sys.stderr, flush=True)
        return None


_recorded: dict[tuple[str, str], dict[str, pa.DataType]] = {}  # (root, table) -> columns this process recorded


def record_columns(root: str | Path, table: str, schema: pa.Schema | None = None) -> None:
    """Make <table>/_common_metadata hold `schema`'s columns too (before a part with them is committed, so no
    reader misses a column). Where there is no record yet, the existing parts' footers are read once to start it.
    A column whose type differs from the recorded one is an error."""
    if table not in EXTENSIBLE:
        return
    key = (str(root), table)
    if schema is not None and all(_recorded.get(key, {}).get(f.name) == f.type for f in schema):
        return  # already recorded by this process: no file to read
    fs, base = filesystem(root)
    partitions = PARTITIONS.get(table, ())
    recorded = recorded_schema(root, table)
    if recorded is None:
        scan = validate(root, table, list_table(root, table))
        if schema is None and not scan.parts:
            return  # nothing to record
        recorded = pa.schema([*file_schema(table), *(pa.field(n, t) for n, t in scan.extra.items())])
        before = None
    else:
        before = recorded
    for f in schema or ():
        if f.name in partitions:
            continue
        if f.name in recorded.names and recorded.field(f.name).type != f.type:
            raise ValueError(f"column {f.name!r} is {f.type} in this commit but {recorded.field(f.name).type} in "
                             f"the store's {table} table; a column keeps one type (rename the parameter)")
        if f.name not in recorded.names:
            recorded = recorded.append(f)
    if before is None or not before.equals(recorded):
        write_atomic(fs, f"{base}/{table}/{SCHEMA_FILE}", lambda out: pq.write_metadata(recorded, out))
    _recorded[key] = {f.name: f.type for f in recorded}


def quarantine(root: str | Path, path: str, reason: str) -> str:
    """Move one file to <root>/_quarantine/<its path in the store>, with a warning on stderr; returns where."""
    fs, base = filesystem(root)
    target = f"{base}/{QUARANTINE}/{path[len(base) + 1:]}"
    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    fs.move(path, target)
    print(f"[store] warning: moved {redact(path)} to {QUARANTINE}/ ({reason}); its rows, if any, will be computed "
          "again by the next run", file=sys.stderr, flush=True)
    return target
