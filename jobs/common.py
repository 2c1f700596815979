"""What every entry point shares: arguments, the exit-code contract, provenance."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable

from jobs.config import ExperimentConfig, load_config
from robrep.errors import RobrepError


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML experiment config, e.g. jobs/configs/digits.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set fanout.steps=50 (repeatable; values are YAML scalars)",
    )
    parser.add_argument("--from-tune", metavar="FILE", default=None,
                        help="a jobs.tune result: its step_size and steps replace those of the inversion jobs")
    return parser.parse_args(argv)


def run_entry_point(main: Callable[[ExperimentConfig], None], description: str, argv: list[str] | None = None) -> None:
    """Load and validate the config, run `main`, and turn robrep errors into one line and exit code 2.

    Any other exception keeps its traceback and exits 1; both make `ray job submit` report FAILED.
    """
    args = parse_args(description, argv)
    exit_on_error(lambda _: main(load_config(args.config, args.overrides, args.from_tune)))


def exit_on_error(main: Callable[[list[str]], None]) -> None:
    """For entry points that take flags instead of a config: the same exit-code contract."""
    try:
        main(sys.argv[1:])
    except RobrepError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def git_sha() -> str:
    """The checkout's commit, ROBREP_GIT_SHA when set (a shipped working dir has no .git), else 'unknown'."""
    if "ROBREP_GIT_SHA" in os.environ:
        return os.environ["ROBREP_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
