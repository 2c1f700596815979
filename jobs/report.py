"""A self-contained HTML report built from the store alone, with each figure also written as a PNG.

    python -m jobs.report --store runs/digits/store --out runs/digits/report
    python -m jobs.report --config jobs/configs/digits.yaml          # the experiment's store; out: <store>/../report

Sections: the models table (paper Table 4/5), then one section per job kind (robrep/fanout/kinds/: Fig. 3/6, 4,
Sec. 2, 7, 11, 12, 8), tuning trials, and the summary numbers. A section whose rows are not in the store
says so and what to run; an empty store gives a report of such notes.
"""

from __future__ import annotations

from jobs.common import Alias, run_entry_point
from jobs.config import ExperimentConfig

ALIASES = (
    Alias("--store", "store", help="the store root"),
    Alias("--out", "report_dir", help="output folder (default: `report` beside a local store)"),
)


def main(config: ExperimentConfig) -> None:
    from robrep.core.location import redact
    from robrep.report import build_report

    store = config.existing_store_root
    config.writable("report_dir")
    report = build_report(store, config.report_root)
    print(f"[report] {len(report.figures)} figures, {len(report.missing)} sections missing: {redact(report.path)}",
          flush=True)


def cli(argv: list[str] | None = None) -> None:
    run_entry_point(main, __doc__, argv, aliases=ALIASES, config_required=False)


if __name__ == "__main__":
    cli()
