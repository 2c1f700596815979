"""Reading the store: any table as a DataFrame, the results with decoded images, committed job ids, models.

Pure pyarrow/pandas: usable from a notebook, a Ray worker or an entry point alike.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from robrep.core.location import filesystem, redact
from robrep.store.schema import PARTITIONS, QUARANTINE, ROW_KEYS, TABLES


@dataclass
class TableScan:
    """The files of one table: the part files that read, and the ones that must not be read (why)."""

    folder: str
    parts: list[str] = field(default_factory=list)
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    temporary: list[str] = field(default_factory=list)  # hidden temp files of an unfinished or killed commit
    extra: dict[str, pa.DataType] = field(default_factory=dict)  # columns of kinds' parameters (EXTENSIBLE tables)


MODEL_SPLITS = ("train", "test")  # the splits of the models' own dataset
EXTENSIBLE = ("results",)  # tables whose parts may carry more columns: the parameters their kinds declare


def read_schema(table: str, scan: TableScan) -> pa.Schema:
    """The table's schema with the extra columns its parts carry (a kind's parameters)."""
    return pa.schema([*TABLES[table], *(pa.field(name, tp) for name, tp in scan.extra.items())])


def _expected_schema(table: str) -> pa.Schema:
    partitions = PARTITIONS.get(table, ())
    schema = TABLES[table]
    return pa.schema([f for f in schema if f.name not in partitions])


def scan_table(root: str | Path, table: str) -> TableScan:
    """Every file under <root>/<table>: part files whose footer reads and whose columns are the table's,
    and the rest (a truncated part, a stray file, a foreign Parquet file) with the reason."""
    fs, base = filesystem(root)
    scan = TableScan(f"{base}/{table}")
    if fs.get_file_info(scan.folder).type == pafs.FileType.NotFound:
        return scan
    expected = _expected_schema(table)
    for info in fs.get_file_info(pafs.FileSelector(scan.folder, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        if info.base_name.startswith("."):
            scan.temporary.append(info.path)
            continue
        if not (info.base_name.startswith("part-") and info.base_name.endswith(".parquet")):
            scan.damaged.append((info.path, "not a part file of this table"))
            continue
        try:
            schema = pq.read_schema(info.path, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as e:
            scan.damaged.append((info.path, f"unreadable: {e}"))
            continue
        # Columns a part of an older version lacks read as null; foreign or mistyped ones do not. A part of an
        # EXTENSIBLE table may add columns (its kind's parameters), each with one type across the table.
        extra = {f.name: f.type for f in schema if f.name not in expected.names and table in EXTENSIBLE}
        strangers = [f.name for f in schema if (f.name in expected.names and expected.field(f.name).type != f.type)
                     or (f.name not in expected.names and f.name not in extra)
                     or f.type != scan.extra.get(f.name, f.type)]
        if strangers:
            scan.damaged.append((info.path, f"columns {strangers[:5]} are not this table's"))
            continue
        scan.extra.update(extra)
        scan.parts.append(info.path)
    return scan


def quarantine(root: str | Path, path: str, reason: str) -> str:
    """Move one file to <root>/_quarantine/<its path in the store>, with a warning on stderr; returns where."""
    fs, base = filesystem(root)
    target = f"{base}/{QUARANTINE}/{path[len(base) + 1:]}"
    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    fs.move(path, target)
    print(f"[store] warning: moved {redact(path)} to {QUARANTINE}/ ({reason}); its rows, if any, will be computed "
          "again by the next run", file=sys.stderr, flush=True)
    return target


def read_table(root: str | Path, table: str, filters: list | None = None, columns: list[str] | None = None
               ) -> pd.DataFrame:
    """One store table as a DataFrame (empty, with the right columns, when nothing is there).

    filters: pandas/pyarrow style, e.g. [("kind", "=", "invert"), ("model_id", "in", ["a", "b"])].
    Partition columns (kind, model_id) come back as the strings they were written as. A damaged or foreign
    file is moved to the quarantine with a warning instead of failing the read; a row key that is on disk
    twice gives one row (the latest).
    """
    if table not in TABLES:
        raise ValueError(f"unknown store table {table!r}; known: {sorted(TABLES)}")
    fs, _ = filesystem(root)
    scan = scan_table(root, table)
    for path, reason in scan.damaged:
        with contextlib.suppress(FileNotFoundError):  # another reader moved it first
            quarantine(root, path, reason)
    if not scan.parts:
        frame = TABLES[table].empty_table().to_pandas()
        return frame.reindex(columns=columns) if columns else frame
    # Partition values are strings, read back exactly as written: no type guessing (model_id 007 stays "007").
    partitioning = pads.HivePartitioning(pa.schema([(c, pa.string()) for c in PARTITIONS.get(table, ())]),
                                         segment_encoding="none")
    schema = read_schema(table, scan)
    dataset = pads.dataset(scan.parts, schema=schema, filesystem=fs, format="parquet",
                           partitioning=partitioning, partition_base_dir=scan.folder)
    keys = ROW_KEYS.get(table, ())
    wanted = None if columns is None else list(dict.fromkeys([*columns, *keys, "created_at"]))
    wanted = None if wanted is None else [c for c in wanted if c in schema.names]
    expression = pq.filters_to_expression(filters) if filters else None
    frame = dataset.to_table(filter=expression, columns=wanted).to_pandas()
    if keys and frame.duplicated(list(keys)).any():
        frame = frame.sort_values("created_at", kind="stable").drop_duplicates(list(keys), keep="last")
        frame = frame.sort_index()
    return frame.reindex(columns=columns).reset_index(drop=True) if columns else frame.reset_index(drop=True)


def load_results(root: str | Path, filters: list | None = None, columns: list[str] | None = None,
                 decode_images: bool = False) -> pd.DataFrame:
    """The results table with filters, normalised: every reader of results (the report, the summaries, a notebook)
    uses this one. decode_images=True adds an `image` column of (H, W, 3) uint8 arrays. Rows written before a
    column existed read as what they were: fp32 `precision`, no judge (`judge_pred` -1), `in_distribution` when
    their split is train or test (another dataset's split is its .beton's name)."""
    from robrep.images import decode_png

    frame = read_table(root, "results", filters, columns)
    if "precision" in frame.columns:
        frame["precision"] = frame["precision"].fillna("fp32")
    if "judge_pred" in frame.columns:
        frame["judge_pred"] = frame["judge_pred"].fillna(-1).astype("int32")
    if "in_distribution" in frame.columns and "split" in frame.columns:
        known = frame["in_distribution"]
        frame["in_distribution"] = known.where(known.notna(), frame["split"].isin(MODEL_SPLITS)).astype(bool)
    if decode_images:
        frame["image"] = [decode_png(b) for b in frame["image_png"]]
    return frame


def committed_job_ids(root: str | Path, table: str = "results") -> set[str]:
    """Job ids already in a table of the store (reads the `job_id` column only)."""
    return set(read_table(root, table, columns=["job_id"])["job_id"])


def find_model(root: str | Path, model_id: str, digest: str | None = None) -> dict | None:
    """The `models` row of model_id: the latest recorded, or the one whose weights have `digest`; None if absent."""
    models = read_table(root, "models", filters=[("model_id", "=", model_id)])
    if digest is not None:
        models = models[models["digest"] == digest]
    if models.empty:
        return None
    return models.sort_values("created_at", kind="stable").iloc[-1].to_dict()


def open_failures(root: str | Path) -> pd.DataFrame:
    """The failures table without the jobs that succeeded since (their rows are committed)."""
    failures = read_table(root, "failures")
    done = set().union(*(committed_job_ids(root, table) for table in PARTITIONS))  # the tables jobs write
    return failures[~failures["job_id"].isin(done)].reset_index(drop=True)


def read_manifests(root: str | Path) -> list[dict]:
    """Every fan-out run's manifest (written last, once its parts are committed), oldest first by finished_at.
    An unreadable one is skipped with a warning: it describes a run, it holds no rows."""
    fs, base = filesystem(root)
    selector = pafs.FileSelector(f"{base}/_manifests", allow_not_found=True)
    manifests = []
    for info in fs.get_file_info(selector):
        if not info.path.endswith(".json") or info.base_name.startswith("."):
            continue
        try:
            with fs.open_input_stream(info.path) as stream:
                manifest = json.loads(stream.read().decode())
        except (OSError, ValueError) as e:
            warnings.warn(f"skipping manifest {info.base_name}: {e}", stacklevel=2)
            continue
        if isinstance(manifest, dict):
            manifests.append(manifest)
    return sorted(manifests, key=lambda m: str(m.get("finished_at", "")))
