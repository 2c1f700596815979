"""The store's tables and their columns (docs/store.md): one Arrow schema per table, and how each is partitioned.

Layout under one root: `<table>/<partition col>=<value>/…/part-<hash>.parquet`, plus `_manifests/`.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa

# The columns every results row has. Each kind's own parameters (constraint, eps, step_size, steps, coordinate,
# lam, ...) are columns too, declared by the kind (robrep.fanout.registry.table_schema adds them); readers take
# them from the part files, so a store reads whole in any process, with or without the kinds that wrote it.
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
        ("model_digest", pa.string()),  # sha256 of the weights that produced the row
        ("dataset_fingerprint", pa.string()),  # sha256 of the .beton its images came from
        ("precision", pa.string()),  # of the PGD loop: fp32 | bf16 (null in rows written before it existed: fp32)
        ("judge_model_id", pa.string()),  # the classifier that labelled image_png (fanout.judge); null: none
        ("judge_pred", pa.int32()),  # its label of image_png, the stored 8-bit image; -1 without a judge
        ("in_distribution", pa.bool_()),  # the models' own dataset (False: e.g. invert's targets_from; null: older)
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
        ("digest", pa.string()),  # sha256 of the weights: one row per (model_id, digest)
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
        ("adv_acc", pa.float32()),  # robust accuracy: right under every attack run (ours and APGD's)
        ("pgd_acc", pa.float32()),  # under our PGD alone (older rows: null, their adv_acc is it)
        ("apgd_ce_acc", pa.float32()),  # under torchattacks' APGD-CE (null: not run)
        ("apgd_dlr_acc", pa.float32()),  # under torchattacks' APGD-DLR (null: not run or < 3 classes)
        ("apgd_steps", pa.int32()),
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

# Partition columns per table: folders `<col>=<value>`; the column is not stored in the part files.
PARTITIONS: dict[str, tuple[str, ...]] = {"results": ("kind", "model_id"), "representations": ("model_id",)}

# The columns that identify a row: readers return one row per key (the latest, by created_at) whatever is on
# disk, so a part written twice (two drivers, a retried commit under another name) never duplicates a row.
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "results": ("job_id", "split_rank"), "representations": ("job_id", "index"),
    "images": ("dataset", "split", "index"), "train_metrics": ("model_id", "epoch"),
    "tune_trials": ("run_id", "trial_id"), "failures": ("run_id", "job_id"),
}
# Columns with big values (a PNG, a representation vector): written without statistics or dictionary (min/max of a
# PNG would copy it twice into every footer), and left out of load_results unless asked for.
HEAVY = ("image_png", "representation")
UNIQUE = ("job_id",)  # one value per row (a hash): a dictionary would only grow the file


def writer_options(schema: pa.Schema) -> dict:
    """pyarrow.parquet.write_table / ParquetWriter options for a part of `schema`: statistics (row-group min/max,
    and a page index) on the columns people filter by, dictionary encoding on the repetitive ones."""
    names = [f.name for f in schema]
    plain = [n for n in names if n not in HEAVY]
    return {"write_statistics": plain, "use_dictionary": [n for n in plain if n not in UNIQUE],
            "write_page_index": True, "compression": "snappy"}


QUARANTINE = "_quarantine"  # damaged or foreign files are moved here, never left to block a read
