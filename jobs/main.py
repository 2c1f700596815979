"""The whole path on one config: build the dataset, train the models (or import and evaluate a zoo of published
ones), fan out inversions, summarise.

    python -m jobs.main --config jobs/configs/digits.yaml          # local Ray, built-in digits
    ray job submit --working-dir . -- python -m jobs.main --config jobs/configs/digits.yaml

Every stage is idempotent: a rerun reuses the dataset, skips trained models and committed jobs.
"""

from __future__ import annotations

import time

import pandas as pd

from jobs.build_dataset import build
from jobs.common import check_resources, run_entry_point
from jobs.config import ExperimentConfig
from jobs.evaluate import evaluate
from jobs.fanout import run_fanout
from jobs.train import train_all
from robrep.core.location import redact
from robrep.report import build_report, current_results, judged_table, summary_table
from robrep.store import read_table


def main(config: ExperimentConfig) -> None:
    from cluster.connect import connect

    start = time.time()
    config.writable("store", *(["storage_path"] if config.train or config.storage_path else []), "report_dir")
    build(config.data)
    connect(config.ray.address, config.ray.num_cpus, verbose=config.ray.verbose)
    check_resources(config, "train", "zoo", "fanout")
    train_all(config)
    for spec in config.zoo:  # imported once, evaluated once per setting: a rerun goes straight on
        evaluate(config, spec, resume=True)
    if config.fanout is None:
        print("[main] no fanout section: done after training", flush=True)
        return
    run_fanout(config)
    results = current_results(config.store_root)
    root = config.store_root
    table = summary_table(read_table(root, "models"), results, read_table(root, "evaluations"))
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(f"\n== summary (store: {redact(config.store_root)}) ==")
        print(table.to_string(index=False))
        judged = judged_table(results)
        if not judged.empty:  # fanout.judge: another classifier's label of every result image
            print(judged.to_string(index=False))
    report = build_report(config.store_root, config.report_root)
    print(f"\n[main] report: {redact(report.path)} ({len(report.figures)} figures)")
    print(f"[main] done in {time.time() - start:.0f}s", flush=True)


def cli(argv: list[str] | None = None) -> None:
    run_entry_point(main, __doc__, argv)


if __name__ == "__main__":
    cli()
