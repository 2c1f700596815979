"""Reading the store: any table as a DataFrame, the results with decoded images, committed job ids, models.

Pure pyarrow/pandas: usable from a notebook, a Ray worker or an entry point alike.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from robrep.location import filesystem
from robrep.store.schema import TABLES


def read_table(root: str | Path, table: str, filters: list | None = None, columns: list[str] | None = None
               ) -> pd.DataFrame:
    """One store table as a DataFrame (empty, with the right columns, when nothing is there).

    filters: pandas/pyarrow style, e.g. [("kind", "=", "invert"), ("model_id", "in", ["a", "b"])].
    Partition columns (kind, model_id of `results`) come back as plain strings.
    """
    if table not in TABLES:
        raise ValueError(f"unknown store table {table!r}; known: {sorted(TABLES)}")
    fs, base = filesystem(root)
    folder = f"{base}/{table}"
    if fs.get_file_info(folder).type == pafs.FileType.NotFound:
        frame = TABLES[table].empty_table().to_pandas()
        return frame[columns] if columns else frame
    dataset = pads.dataset(folder, filesystem=fs, format="parquet", partitioning="hive")
    expression = pq.filters_to_expression(filters) if filters else None
    frame = dataset.to_table(filter=expression, columns=columns).to_pandas()
    for name in ("kind", "model_id"):
        if name in frame.columns and isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = frame[name].astype(str)
    return frame


def load_results(root: str | Path, filters: list | None = None, columns: list[str] | None = None,
                 decode_images: bool = False) -> pd.DataFrame:
    """The results table with filters; decode_images=True adds an `image` column of (H, W, 3) uint8 arrays."""
    from robrep.figures import decode_png

    frame = read_table(root, "results", filters, columns)
    if decode_images:
        frame["image"] = [decode_png(b) for b in frame["image_png"]]
    return frame


def committed_job_ids(root: str | Path, table: str = "results") -> set[str]:
    """Job ids already in a table of the store (reads the `job_id` column only)."""
    return set(read_table(root, table, columns=["job_id"])["job_id"])


def find_model(root: str | Path, model_id: str) -> dict | None:
    """The `models` row of model_id (the latest, if it was recorded more than once), or None."""
    models = read_table(root, "models", filters=[("model_id", "=", model_id)])
    if models.empty:
        return None
    return models.sort_values("created_at").iloc[-1].to_dict()
