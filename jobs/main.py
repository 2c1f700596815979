"""The whole path on one config: build the dataset, train the models, fan out inversions, summarise.

    python -m jobs.main --config jobs/configs/digits.yaml          # local Ray, built-in digits
    ray job submit --working-dir . -- python -m jobs.main --config jobs/configs/digits.yaml

Every stage is idempotent: a rerun reuses the dataset, skips trained models and committed jobs.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from jobs.build_dataset import build
from jobs.common import run_entry_point
from jobs.config import ExperimentConfig
from jobs.fanout import run_fanout
from jobs.report import build_report
from jobs.train import train_all
from robrep.store import read_table


def summarize(config: ExperimentConfig) -> pd.DataFrame:
    """Per model, from the store alone: accuracies and the inversion statistics of the paper's Sec. 4.1.

    other_class_nearer_target: the fraction of inversions started from an image of another class that end
    nearer the target than their source in pixel L2.
    """
    models = read_table(config.store_root, "models").set_index("model_id")
    results = read_table(config.store_root, "results", filters=[("kind", "=", "invert")])
    results["model_id"] = results["model_id"].astype(str)
    rows = []
    for model_id, group in results.groupby("model_id"):
        other = group[(group["init"] == "image") & (group["source_class"] != group["target_class"])]
        model = models.loc[model_id] if model_id in models.index else None
        rows.append({
            "model_id": model_id,
            "robust": bool(model["robust"]) if model is not None else None,
            "eps": float(model["eps"]) if model is not None else None,
            "clean_acc": float(model["clean_acc"]) if model is not None else None,
            "adv_acc": float(model["adv_acc"]) if model is not None else None,
            "jobs": len(group),
            "mean_rep_dist_rel": group["rep_dist_rel"].mean(),
            "mean_pix_dist_target": group["pix_dist_target"].mean(),
            "other_class_nearer_target": (other["pix_dist_target"] < other["pix_dist_source"]).mean(),
            "other_class_jobs": len(other),
        })
    return pd.DataFrame(rows)


def main(config: ExperimentConfig) -> None:
    from cluster.connect import connect

    start = time.time()
    build(config.data)
    connect(config.ray.address, config.ray.num_cpus)
    train_all(config)
    if config.fanout is None:
        print("[main] no fanout section: done after training", flush=True)
        return
    run_fanout(config)
    table = summarize(config)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(f"\n== summary (store: {config.store_root}) ==")
        print(table.to_string(index=False))
    report = build_report(config.store_root, report_dir(config))
    print(f"\n[main] report: {report.path} ({len(report.figures)} figures)")
    print(f"[main] done in {time.time() - start:.0f}s", flush=True)


def report_dir(config: ExperimentConfig) -> str:
    """Beside a local store; under the checkpoints folder for a URI store."""
    if "://" in config.store_root:
        return str(config.storage_root / "report")
    return str(Path(config.store_root).parent / "report")


if __name__ == "__main__":
    run_entry_point(main, __doc__)
