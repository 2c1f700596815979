"""Check or repair a store: row counts per table, damaged or foreign files, unfinished commits, open failures.

    python -m jobs.store check --store runs/digits/store      # lists; changes nothing
    python -m jobs.store repair --store runs/digits/store     # moves damaged and foreign files to _quarantine/
                                                              # and removes temp files older than an hour

A rerun of the fan-out computes again the jobs whose rows were in a quarantined part. Exits 1 when check
finds damaged files, so a scheduled check can alert.
"""

from __future__ import annotations

import sys
import time

from jobs.common import Alias, run_entry_point
from jobs.config import ExperimentConfig
from robrep.core.errors import ConfigError
from robrep.core.location import filesystem, redact
from robrep.store.read import open_failures, quarantine, read_table, scan_table
from robrep.store.schema import TABLES

ACTIONS = ("check", "repair")
STALE_TEMP_S = 3600  # a temp file this old belongs to a commit that was killed
ALIASES = (Alias("--store", "store", help="the store root"),)


def run(config: ExperimentConfig, action: str) -> int:
    """Print the store's state; repair if asked. Returns the number of damaged files found."""
    root = config.store_root
    fs, _ = filesystem(root)
    damaged = 0
    print(f"[store] {redact(root)}")
    for table in TABLES:
        scan = scan_table(root, table)
        damaged += len(scan.damaged)
        for path, reason in scan.damaged:
            if action == "repair":
                quarantine(root, path, reason)
            else:
                print(f"[store]   damaged {redact(path)}: {reason}")
        stale = [p for p in scan.temporary if time.time() - fs.get_file_info(p).mtime.timestamp() > STALE_TEMP_S]
        if action == "repair":
            for path in stale:
                fs.delete_file(path)
        rows = len(read_table(root, table, columns=[TABLES[table].names[0]])) if action == "repair" or \
            not scan.damaged else "?"
        print(f"[store] {table}: {rows} rows in {len(scan.parts)} parts, {len(scan.damaged)} damaged, "
              f"{len(scan.temporary)} temp files ({len(stale)} stale{', removed' if action == 'repair' else ''})")
    print(f"[store] open failures: {len(open_failures(root)) if action == 'repair' or not damaged else '?'}")
    return damaged


def cli(argv: list[str] | None = None) -> None:
    """`check|repair` first, then the usual flags. Exits 1 when check finds damaged files."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ACTIONS:
        print(f"error: ConfigError: the first argument must be one of {ACTIONS}, e.g. python -m jobs.store check "
              "--store runs/digits/store", file=sys.stderr, flush=True)
        sys.exit(2)
    found: list[int] = []

    def entry(config: ExperimentConfig) -> None:
        if config.store is None:
            raise ConfigError("jobs.store needs --store (or a config with store:)")
        found.append(run(config, argv[0]))

    run_entry_point(entry, __doc__, argv[1:], aliases=ALIASES, config_required=False)
    sys.exit(1 if argv[0] == "check" and found and found[0] else 0)


if __name__ == "__main__":
    cli()
