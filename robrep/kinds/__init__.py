"""The registry of fan-out job kinds. Each kind is one module holding its config block (a frozen dataclass
validated at the door), `expand` (block -> jobs), `run` (a batch of jobs -> rows), the table it writes and
its report section; config parsing, planning, the workers, the report and the tests iterate this registry.

Adding a kind: write robrep/kinds/<name>.py ending in `KIND = JobKind(...)` (invert.py is the model to copy),
then add it to the tuple below. Nothing else changes.
"""

from __future__ import annotations

from robrep.errors import ConfigError
from robrep.kinds import (
    interpolate,
    invert,
    invert_sweep,
    manipulate,
    pairs,
    regularized_visualize,
    representations,
    top_activating,
    visualize,
)
from robrep.kinds.base import Job, JobKind

KINDS: dict[str, JobKind] = {k.name: k for k in (
    invert.KIND,
    invert_sweep.KIND,
    pairs.KIND,
    visualize.KIND,
    regularized_visualize.KIND,
    manipulate.KIND,
    interpolate.KIND,
    top_activating.KIND,
    representations.KIND,
)}


def list_kinds() -> list[str]:
    return list(KINDS)


def get_kind(name: str) -> JobKind:
    if name not in KINDS:
        raise ConfigError(f"unknown job kind {name!r}; known: {list_kinds()}")
    return KINDS[name]


def run_settings(jobs: list[Job]) -> dict[str, list[str]]:
    """Per kind, the block settings (Job.setting) a fan-out run planned, committed before or not: the fan-out's
    manifest keeps them, and the report shows, per kind, the settings of the last run that had that kind."""
    out: dict[str, set[str]] = {}
    for job in jobs:
        out.setdefault(job.kind, set()).add(job.setting(get_kind(job.kind).varies))
    return {kind: sorted(keys) for kind, keys in out.items()}
