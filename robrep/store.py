"""The store's schema (DESIGN §3), row builders, and read helpers. Pure pyarrow/pandas: no Ray.

Layout under one root: `results/kind=<kind>/model=<model_id>/part-<hash>.parquet`, `models/`,
`failures/`, `_manifests/`.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from PIL import Image

KINDS = ("invert", "invert_sweep", "pairs", "visualize", "manipulate", "interpolate", "top_activating")

RESULTS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("job_id", pa.string()),
        ("kind", pa.string()),
        ("model_id", pa.string()),
        ("model_robust", pa.bool_()),
        ("model_eps", pa.float32()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("target_index", pa.int64()),
        ("source_index", pa.int64()),
        ("init", pa.string()),
        ("rng_seed", pa.int64()),
        ("constraint", pa.string()),
        ("eps", pa.float32()),
        ("step_size", pa.float32()),
        ("steps", pa.int32()),
        ("coordinate", pa.int32()),
        ("lam", pa.float32()),
        ("rep_dist", pa.float32()),
        ("rep_dist_rel", pa.float32()),
        ("pix_dist_target", pa.float32()),
        ("pix_dist_source", pa.float32()),
        ("activation", pa.float32()),
        ("activation_rank", pa.int32()),
        ("split_rank", pa.int32()),  # top_activating: place in the split sorted by activation (0 = most)
        ("pred_class", pa.int32()),
        ("target_class", pa.int32()),
        ("source_class", pa.int32()),
        ("steps_taken", pa.int32()),
        ("loss_final", pa.float32()),
        ("image_png", pa.binary()),
        ("representation", pa.list_(pa.float32())),
        ("node", pa.string()),
        ("device", pa.string()),
        ("seconds", pa.float32()),
        ("git_sha", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

MODELS_SCHEMA = pa.schema(
    [
        ("model_id", pa.string()),
        ("arch", pa.string()),
        ("dataset", pa.string()),
        ("robust", pa.bool_()),
        ("constraint", pa.string()),
        ("eps", pa.float32()),
        ("clean_acc", pa.float32()),
        ("adv_acc", pa.float32()),
        ("adv_eps", pa.float32()),
        ("adv_steps", pa.int32()),
        ("epochs", pa.int32()),
        ("seconds", pa.float32()),
        ("checkpoint", pa.string()),
        ("git_sha", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

TRAIN_METRICS_SCHEMA = pa.schema(
    [
        ("model_id", pa.string()),
        ("epoch", pa.int32()),
        ("loss", pa.float32()),
        ("train_acc", pa.float32()),
        ("clean_acc", pa.float32()),  # NaN on epochs without evaluation
        ("adv_acc", pa.float32()),
        ("lr", pa.float32()),
        ("images_per_s", pa.float32()),
        ("seconds", pa.float32()),
        ("world_size", pa.int32()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

EVALUATIONS_SCHEMA = pa.schema(
    [
        ("model_id", pa.string()),
        ("checkpoint", pa.string()),
        ("dataset", pa.string()),
        ("n", pa.int64()),
        ("clean_acc", pa.float32()),
        ("adv_acc", pa.float32()),
        ("constraint", pa.string()),
        ("eps", pa.float32()),
        ("steps", pa.int32()),
        ("step_size", pa.float32()),
        ("restarts", pa.int32()),
        ("seconds", pa.float32()),
        ("git_sha", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

REPRESENTATIONS_SCHEMA = pa.schema(  # R(x) of every image of a split, per model (top_activating's input)
    [
        ("run_id", pa.string()),
        ("job_id", pa.string()),
        ("model_id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("index", pa.int64()),
        ("label", pa.int32()),
        ("representation", pa.list_(pa.float32())),
        ("git_sha", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

IMAGES_SCHEMA = pa.schema(  # the dataset images that results refer to (targets, sources), for figures
    [
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("index", pa.int64()),
        ("label", pa.int32()),
        ("image_png", pa.binary()),
    ]
)

TUNE_TRIALS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("trial_id", pa.string()),
        ("model_id", pa.string()),
        ("objective", pa.string()),  # inversion: final rep_dist_rel; attack: adversarial accuracy
        ("constraint", pa.string()),
        ("eps", pa.float32()),
        ("step_size", pa.float32()),
        ("steps", pa.int32()),
        ("steps_done", pa.int32()),  # < steps when ASHA stopped the trial early
        ("metric", pa.float32()),
        ("seconds", pa.float32()),
        ("git_sha", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

FAILURES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("job_id", pa.string()),
        ("kind", pa.string()),
        ("model_id", pa.string()),
        ("error", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def encode_png(image: torch.Tensor) -> bytes:
    """(3, H, W) float in [0,1] -> 8-bit RGB PNG bytes."""
    array = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts keyed by column) -> a table with exactly `schema`; absent optional columns become null."""
    missing = [name for name in ("job_id",) if name in schema.names and any(name not in r for r in rows)]
    if missing:
        raise ValueError(f"rows lack required columns {missing}")
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


TABLES = {"results": RESULTS_SCHEMA, "models": MODELS_SCHEMA, "failures": FAILURES_SCHEMA,
          "train_metrics": TRAIN_METRICS_SCHEMA, "evaluations": EVALUATIONS_SCHEMA, "tune_trials": TUNE_TRIALS_SCHEMA,
          "images": IMAGES_SCHEMA, "representations": REPRESENTATIONS_SCHEMA}


def filesystem(root: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) for a local path or a pyarrow filesystem URI such as s3://bucket/store."""
    if "://" in str(root):
        return pafs.FileSystem.from_uri(str(root))
    return pafs.LocalFileSystem(), str(Path(root).resolve())


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
    frame = read_table(root, "results", filters, columns)
    if decode_images:
        frame["image"] = [decode_png(b) for b in frame["image_png"]]
    return frame


def image_grid(rows: pd.DataFrame, ncols: int = 8, caption: str | None = None, scale: int = 1) -> Image.Image:
    """A grid image of the rows' `image_png`s, row-major, optionally captioned by one column's values."""
    from PIL import ImageDraw

    images = [decode_png(b) for b in rows["image_png"]]
    if not images:
        raise ValueError("image_grid got no rows")
    h, w = images[0].shape[0] * scale, images[0].shape[1] * scale
    text_h = 12 if caption else 0
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    grid = Image.new("RGB", (ncols * (w + 2), nrows * (h + text_h + 2)), "white")
    draw = ImageDraw.Draw(grid)
    labels = list(rows[caption]) if caption else [None] * len(images)
    for n, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (n % ncols) * (w + 2), (n // ncols) * (h + text_h + 2)
        grid.paste(Image.fromarray(image).resize((w, h), Image.NEAREST), (x, y))
        if label is not None:
            draw.text((x + 1, y + h), str(label)[:12], fill="black")
    return grid
