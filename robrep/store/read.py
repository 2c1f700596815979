"""Reading the store: any table as a DataFrame, the results with decoded images, committed job ids, models.

Pure pyarrow/pandas: usable from a notebook, a Ray worker or an entry point alike.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from robrep.core.errors import StorageError
from robrep.core.location import filesystem, redact
from robrep.store.files import TableScan, list_table, quarantine, recorded_schema, validate
from robrep.store.schema import HEAVY, PARTITIONS, ROW_KEYS, TABLES

MODEL_SPLITS = ("train", "test")  # the splits of the models' own dataset
_READ_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError)


def table_schema_of(root: str | Path, table: str, scan: TableScan) -> pa.Schema:
    """The table's columns, partition columns included, with the extra columns its parts carry (a kind's
    parameters): from the table's record, or where there is none from the footers of the listed parts."""
    recorded = recorded_schema(root, table)
    if recorded is None:
        validate(root, table, scan)
        recorded = pa.schema(list(scan.extra.items()))
    base = TABLES[table]
    return pa.schema([*base, *(f for f in recorded if f.name not in base.names)])


def _quarantine_all(root: str | Path, damaged: list[tuple[str, str]]) -> None:
    for path, reason in damaged:
        with contextlib.suppress(FileNotFoundError):  # another reader moved it first
            quarantine(root, path, reason)


def read_arrow(root: str | Path, table: str, filters: list | None = None, columns: list[str] | None = None,
               exclude: tuple[str, ...] = ()) -> pa.Table:
    """The one place that reads part files: the folders the filter's partition columns allow (nothing else is
    listed or opened), the columns asked for (all but `exclude` by default). Footers are not checked first: when
    the read fails, they are, a damaged part is quarantined and the read runs again without it; a part removed by
    a compaction since the listing makes it list again."""
    if table not in TABLES:
        raise ValueError(f"unknown store table {table!r}; known: {sorted(TABLES)}")
    fs, _ = filesystem(root)
    expression = pq.filters_to_expression(filters) if filters else None
    for _attempt in range(5):
        scan = list_table(root, table, filters)
        schema = table_schema_of(root, table, scan) if scan.parts else TABLES[table]
        _quarantine_all(root, scan.damaged)
        wanted = [c for c in (columns if columns is not None else schema.names)
                  if c in schema.names and c not in exclude]
        if not scan.parts:
            return schema.empty_table().select(wanted)
        # Partition values are strings, read back exactly as written: no type guessing (model_id 007 stays "007").
        partitioning = pads.HivePartitioning(pa.schema([(c, pa.string()) for c in PARTITIONS.get(table, ())]),
                                             segment_encoding="none")
        dataset = pads.dataset(scan.parts, schema=schema, filesystem=fs, format="parquet", partitioning=partitioning,
                               partition_base_dir=scan.folder)
        try:
            return dataset.to_table(filter=expression, columns=wanted)
        except FileNotFoundError:
            continue  # replaced by a compaction after the listing
        except _READ_ERRORS:
            validate(root, table, scan)
            if not scan.damaged:
                raise
            _quarantine_all(root, scan.damaged)
    raise StorageError(f"the {table} table of {redact(root)} kept changing while it was read; is a compaction "
                       "looping? (python -m jobs.store check)")


def read_table(root: str | Path, table: str, filters: list | None = None, columns: list[str] | None = None,
               exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """One store table as a DataFrame (empty, with the right columns, when nothing is there).

    filters: pandas/pyarrow style, e.g. [("kind", "=", "invert"), ("model_id", "in", ["a", "b"])]; on partition
    columns (kind, model_id) they decide which folders are opened at all. Partition columns come back as the strings
    they were written as. A damaged or foreign file is moved to the quarantine with a warning instead of failing
    the read; a row key that is on disk twice gives one row (the latest).
    """
    keys = ROW_KEYS.get(table, ())
    wanted = None if columns is None else list(dict.fromkeys([*columns, *keys, "created_at"]))
    frame = read_arrow(root, table, filters, wanted, exclude).to_pandas()
    if keys and len(frame) and frame.duplicated(list(keys)).any():
        frame = frame.sort_values("created_at", kind="stable").drop_duplicates(list(keys), keep="last")
        frame = frame.sort_index()
    if columns is not None:
        frame = frame.reindex(columns=columns)
    return frame.reset_index(drop=True)


def load_results(root: str | Path, filters: list | None = None, columns: list[str] | None = None,
                 images: bool = False, decode_images: bool = False) -> pd.DataFrame:
    """The results table with filters, normalised: every reader of results (the report, the summaries, a notebook)
    uses this one. Every column but the heavy ones (`image_png`, `representation`): those only when named in
    `columns`, or images=True for `image_png` (decode_images=True: also an `image` column of (H, W, 3) uint8
    arrays). For a few rows' images out of a big store, load_images(root, rows) reads only theirs. Rows written
    before a column existed read as what they were: fp32 `precision`, no judge (`judge_pred` -1),
    `in_distribution` when their split is train or test (another dataset's split is its .beton's name)."""
    images = images or decode_images
    exclude = tuple(c for c in HEAVY if not (images and c == "image_png"))
    frame = read_table(root, "results", filters, columns, exclude=() if columns is not None else exclude)
    if "precision" in frame.columns:
        frame["precision"] = frame["precision"].fillna("fp32")
    if "judge_pred" in frame.columns:
        frame["judge_pred"] = frame["judge_pred"].fillna(-1).astype("int32")
    if "in_distribution" in frame.columns and "split" in frame.columns:
        known = frame["in_distribution"]
        frame["in_distribution"] = known.where(known.notna(), frame["split"].isin(MODEL_SPLITS)).astype(bool)
    if decode_images:
        from robrep.images import decode_png  # torch: imported only when asked

        frame["image"] = [decode_png(b) for b in frame["image_png"]]
    return frame


def load_images(root: str | Path, rows: pd.DataFrame | list[str], decode: bool = False) -> pd.DataFrame:
    """The images of chosen results rows, without reading the others': `rows` is a frame from load_results (its
    `kind` and `model_id` name the folders to open) or a list of job ids. Returns the frame with `image_png` (and,
    decode=True, `image`) added, in its order; for a list, one row per stored image (job_id, split_rank, kind,
    model_id, image_png). Only the row groups that hold a chosen row are read."""
    frame = pd.DataFrame({"job_id": list(rows)}) if not isinstance(rows, pd.DataFrame) else rows
    ids = sorted(set(frame["job_id"]))
    if not ids and isinstance(rows, pd.DataFrame):
        return frame.assign(image_png=pd.Series(dtype=object), **({"image": pd.Series(dtype=object)} if decode else {}))
    filters = [(c, "in", sorted(set(frame[c]))) for c in PARTITIONS["results"] if c in frame.columns]
    found = _images_of(root, ids, filters) if ids else pd.DataFrame(
        columns=["job_id", "split_rank", "kind", "model_id", "image_png"])
    if not isinstance(rows, pd.DataFrame):
        out = found
    else:
        keys = [k for k in ROW_KEYS["results"] if k in frame.columns]
        out = frame.drop(columns=[c for c in ("image_png", "image") if c in frame.columns]).merge(
            found[[*keys, "image_png"]], on=keys, how="left", validate="many_to_one")
        out.index = frame.index
    if decode:
        from robrep.images import decode_png

        out["image"] = [decode_png(b) if isinstance(b, bytes) else None for b in out["image_png"]]
    return out


def _images_of(root: str | Path, ids: list[str], filters: list) -> pd.DataFrame:
    """(job_id, split_rank, kind, model_id, image_png, created_at) of the job ids, one per row key (the latest):
    the job_id column of each part first, then only the row groups that hold one of them."""
    wanted = pa.array(ids)
    fs, _ = filesystem(root)
    scan = list_table(root, "results", filters)
    pieces = []
    try:
        for path in scan.parts:
            with fs.open_input_file(path) as handle:
                part = pq.ParquetFile(handle)
                found = pc.is_in(part.read(columns=["job_id"]).column(0), wanted)
                if not pc.any(found).as_py():
                    continue
                bounds = np.cumsum([0] + [part.metadata.row_group(i).num_rows
                                          for i in range(part.metadata.num_row_groups)])
                groups = sorted({int(np.searchsorted(bounds, i, side="right")) - 1
                                 for i in np.flatnonzero(found.to_numpy(zero_copy_only=False))})
                names = [c for c in ("job_id", "split_rank", "image_png", "created_at")
                         if c in part.schema_arrow.names]
                got = part.read_row_groups(groups, columns=names)
                got = got.filter(pc.is_in(got.column("job_id"), wanted))
            kind, model = (segment.split("=", 1)[1] for segment in path.split("/")[-3:-1])
            pieces.append(got.to_pandas().assign(kind=kind, model_id=model))
    except _READ_ERRORS:  # a damaged part, or one replaced since the listing: the general read copes with both
        pieces = [read_table(root, "results", [*filters, ("job_id", "in", ids)],
                             ["job_id", "split_rank", "kind", "model_id", "image_png", "created_at"])]
    found = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(
        columns=["job_id", "split_rank", "kind", "model_id", "image_png", "created_at"])
    if "split_rank" not in found.columns:
        found["split_rank"] = pd.NA
    found = found.sort_values("created_at", kind="stable").drop_duplicates(list(ROW_KEYS["results"]), keep="last")
    return found.sort_values(["job_id", "split_rank"], kind="stable").reset_index(drop=True)


def committed_job_ids(root: str | Path, table: str = "results", filters: list | None = None) -> set[str]:
    """Job ids already in a table of the store: the `job_id` column alone, of the partitions `filters` allow."""
    return set(pc.unique(read_arrow(root, table, filters, ["job_id"]).column("job_id")).to_pylist())


def find_model(root: str | Path, model_id: str, digest: str | None = None) -> dict | None:
    """The `models` row of model_id: the latest recorded, or the one whose weights have `digest`; None if absent."""
    models = read_table(root, "models", filters=[("model_id", "=", model_id)])
    if digest is not None:
        models = models[models["digest"] == digest]
    if models.empty:
        return None
    return models.sort_values("created_at", kind="stable").iloc[-1].to_dict()


def open_failures(root: str | Path) -> pd.DataFrame:
    """The failures table without the jobs that succeeded since (their rows are committed): only the partitions of
    the failed jobs' kinds and models are read."""
    failures = read_table(root, "failures")
    if failures.empty:
        return failures
    done = set().union(*(  # the tables jobs write
        committed_job_ids(root, table, [(c, "in", sorted(set(failures[c]))) for c in PARTITIONS[table]])
        for table in PARTITIONS))
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
