"""Check, repair or compact a store: row counts per table, damaged or foreign files, unfinished commits, open
failures.

    python -m jobs.store check --store runs/digits/store      # lists; changes nothing
    python -m jobs.store repair --store runs/digits/store     # moves damaged and foreign files to _quarantine/,
                                                              # removes temp files older than an hour and writes
                                                              # results/_common_metadata where it is missing
    python -m jobs.store compact --store runs/digits/store    # rewrites each partition's small parts as a few
                                                              # big files, one row per row key (takes the lease)

A rerun of the fan-out computes again the jobs whose rows were in a quarantined part. Exits 1 when check
finds damaged files, so a scheduled check can alert.
"""

from __future__ import annotations

import sys
import time
import uuid

from jobs.common import Alias, run_entry_point
from jobs.config import ExperimentConfig
from robrep.core.errors import ConfigError
from robrep.core.location import filesystem, redact
from robrep.store.compact import compact_store
from robrep.store.files import EXTENSIBLE, list_table, quarantine, record_columns, recorded_schema, validate
from robrep.store.lease import StoreLease
from robrep.store.read import open_failures
from robrep.store.schema import TABLES

ACTIONS = ("check", "repair", "compact")
STALE_TEMP_S = 3600  # a temp file this old belongs to a commit that was killed
ALIASES = (Alias("--store", "store", help="the store root"),)


def run(config: ExperimentConfig, action: str) -> int:
    """Print the store's state; repair or compact if asked. Returns the number of damaged files found."""
    root = config.existing_store_root
    fs, _ = filesystem(root)
    if action != "check":
        config.writable("store")
    print(f"[store] {redact(root)}")
    if action == "compact":
        with StoreLease(root, f"compact-{uuid.uuid4().hex[:8]}", hint="compact once it has finished (a fan-out "
                        "compacts its own partitions past fanout.compact_parts)"):
            start = time.perf_counter()
            done = compact_store(root)
        for c in done:
            print(f"[store] compacted {c.folder}: {c.parts_before} parts -> {c.parts_after} ({c.rows} rows, "
                  f"{c.dropped} superseded) in {c.seconds:.1f}s")
        print(f"[store] {len(done)} partition folders compacted in {time.perf_counter() - start:.1f}s")
    damaged = 0
    for table in TABLES:  # one listing and one footer read per part
        scan = validate(root, table, list_table(root, table))
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
            if scan.parts:
                record_columns(root, table)
        note = ""
        if table in EXTENSIBLE and scan.parts and recorded_schema(root, table) is None:
            note = "; no column record (_common_metadata): every read opens every footer, repair writes it"
        print(f"[store] {table}: {sum(scan.rows.values())} rows in {len(scan.parts)} parts, {len(scan.damaged)} "
              f"damaged, {len(scan.temporary)} temp files ({len(stale)} stale"
              f"{', removed' if action == 'repair' else ''}){note}")
    print(f"[store] open failures: {len(open_failures(root)) if action != 'check' or not damaged else '?'}")
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
