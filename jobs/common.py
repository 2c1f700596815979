"""What every entry point shares: one command-line shape, the exit-code contract, provenance.

Every entry point takes `--config FILE` (optional where its flags say everything), any number of
`--set key=value`, `--verbose`, and its own short flags, each an alias of one config key (e.g.
jobs.evaluate's `--eps 2` is `--set evaluate.attack.eps=2`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from jobs.config import ExperimentConfig, load_config
from robrep.core.errors import ConfigError, one_line, robrep_cause


@dataclass(frozen=True)
class Alias:
    """A short flag for one config key. type: str, int or float take a value; bool is a switch (sets true)."""

    flag: str
    key: str
    type: type = str
    help: str = ""


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are ConfigErrors: one `error:` line and exit 2, like every other bad input."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see python -m {self.prog} --help)")


def parse_args(description: str, argv: list[str], aliases: tuple[Alias, ...], config_required: bool
               ) -> argparse.Namespace:
    parser = _Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=config_required, default=None,
                        help="YAML experiment config, e.g. jobs/configs/digits.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set fanout.batch_size=32 or --set train.digits_robust.epochs=3 "
             "(repeatable; values are YAML scalars, never evaluated)",
    )
    parser.add_argument("--from-tune", metavar="FILE", default=None,
                        help="a jobs.tune result: its step_size and steps replace those of the inversion jobs")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own messages on the console")
    for alias in aliases:
        help_text = f"{alias.help} (= --set {alias.key}=...)"
        if alias.type is bool:
            parser.add_argument(alias.flag, dest=alias.key, action="store_const", const=True, default=None,
                                help=help_text)
        else:
            parser.add_argument(alias.flag, dest=alias.key, type=alias.type, default=None, help=help_text)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace, aliases: tuple[Alias, ...]) -> ExperimentConfig:
    values = {alias.key: getattr(args, alias.key) for alias in aliases if getattr(args, alias.key) is not None}
    if args.verbose:
        values["ray.verbose"] = True
    return load_config(args.config, args.overrides, args.from_tune, values)


def run_entry_point(main: Callable[[ExperimentConfig], None], description: str, argv: list[str] | None = None,
                    aliases: tuple[Alias, ...] = (), config_required: bool = True) -> None:
    """Parse the command line into a validated config, run `main`, and turn robrep errors into one line and
    exit code 2. Any other exception keeps its traceback and exits 1; both make `ray job submit` report FAILED.
    """
    try:
        args = parse_args(description, sys.argv[1:] if argv is None else argv, aliases, config_required)
        main(config_from_args(args, aliases))
    except Exception as e:
        ours = robrep_cause(e)
        if ours is None:
            raise
        message = one_line(str(ours))
        print(f"error: {type(ours).__name__}: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def check_resources(config: ExperimentConfig, *sections: str) -> None:
    """After connecting: every Ray resource request of these config sections (train, fanout, zoo, tune)
    can be met by this cluster (cluster.connect.check_fits), all checked before the first of them runs, so a request
    no node can meet is an error before any model is trained."""
    from cluster.connect import check_fits
    from jobs.train import already_trained

    if "train" in sections:
        for spec in (s for s in config.train if not already_trained(config, s.model_id)):
            gpus = spec.gpus_per_worker if spec.use_gpu else 0
            check_fits({"CPU": spec.cpus_per_worker, "GPU": gpus}, f"train {spec.model_id}", spec.num_workers)
    if "fanout" in sections and config.fanout is not None:
        fan = config.fanout
        check_fits({"CPU": fan.cpus_per_worker, "GPU": fan.gpus_per_worker}, "fanout", fan.workers)
    for spec in config.zoo if "zoo" in sections else ():
        check_fits({"CPU": spec.cpus_per_shard, "GPU": spec.gpus_per_shard}, "evaluate shards")
    if "tune" in sections and config.tune is not None:
        check_fits({"CPU": config.tune.cpus_per_trial, "GPU": config.tune.gpus_per_trial}, "tune trials")


def git_sha() -> str:
    """The checkout's commit, ROBREP_GIT_SHA when set (a shipped working dir has no .git), else 'unknown'."""
    if "ROBREP_GIT_SHA" in os.environ:
        return os.environ["ROBREP_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
