"""The registry of fan-out job kinds. Each kind is one module (robrep/fanout/kinds/) holding its config block (a
frozen dataclass validated at the door), `expand` (block -> jobs), `run` (a batch of jobs -> rows), the parameters
its jobs carry, the table it writes and its report section; config parsing, planning, the workers, the report and
the tests iterate this registry.

A kind declares its jobs' own parameters (JobKind.params): the results columns, the job id, the batch key and the
block setting are derived from them. Adding a kind: write robrep/fanout/kinds/<name>.py ending in
`KIND = JobKind(...)` (invert.py is the model to copy) and add it to the tuple below; or, from outside the tree,
call `register(KIND)` in a module named by the environment variable ROBREP_KINDS (comma-separated modules,
imported here, so that the driver, every worker and jobs.report know it). Nothing else changes (docs/kinds.md).
"""

from __future__ import annotations

import importlib
import os

import pyarrow as pa

from robrep.core.config import from_dict
from robrep.core.errors import ConfigError
from robrep.fanout.job import BlockSpec, Job, JobKind, Param
from robrep.fanout.kinds import (
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
from robrep.store.schema import TABLES

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
    if not isinstance(name, str) or name not in KINDS:
        raise ConfigError(f"unknown job kind {name!r}; known: {list_kinds()}")
    return KINDS[name]


def run_settings(jobs: list[Job]) -> dict[str, list[str]]:
    """Per kind, the block settings (Job.setting) a fan-out run planned, committed before or not: the fan-out's
    manifest keeps them, and the report shows, per kind, the settings of the last run that had that kind."""
    out: dict[str, set[str]] = {}
    for job in jobs:
        kind = get_kind(job.kind)
        out.setdefault(job.kind, set()).add(kind.setting(kind.job_values(job)))
    return {kind: sorted(keys) for kind, keys in out.items()}


def block_from_config(data, where: str) -> BlockSpec:
    """A fanout.jobs block: its kind picks its spec from the registry; the rest of the keys are that spec's."""
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(f"{where.rstrip('.')}: each job block needs a kind, one of {list_kinds()}")
    return from_dict(get_kind(data["kind"]).spec, data, where)


def register(kind: JobKind) -> JobKind:
    """Add a kind to the registry (a module named in ROBREP_KINDS calls this); its params must agree in type and
    default with a same-named parameter of any kind already registered (one column each)."""
    if kind.name in KINDS and KINDS[kind.name] is not kind:
        raise ConfigError(f"job kind {kind.name!r} is registered twice")
    _check_params([*(p for k in KINDS.values() for p in k.params), *kind.params], kind.name)
    KINDS[kind.name] = kind
    return kind


def _check_params(params: list[Param], where: str) -> None:
    seen: dict[str, Param] = {}
    common = {f.name for f in TABLES["results"]}
    for p in params:
        if p.name in common:
            raise ConfigError(f"job kind {where}: parameter {p.name!r} is a column every row has; rename it")
        other = seen.setdefault(p.name, p)
        same_default = other.default == p.default or (other.default != other.default and p.default != p.default)
        if other.type != p.type or not same_default:
            raise ConfigError(f"job kind {where}: parameter {p.name!r} is declared twice, as {other.type} "
                              f"(default {other.default!r}) and {p.type} (default {p.default!r}); one name, one column")


def params_of(table: str = "results") -> dict[str, Param]:
    """Every registered kind's parameters that write to `table`, by name (one column each)."""
    return {p.name: p for k in KINDS.values() if k.table == table for p in k.params}


def table_schema(table: str) -> pa.Schema:
    """The store's schema of `table` with every registered kind's parameter columns."""
    extra = [pa.field(p.name, p.type) for p in params_of(table).values() if p.name not in TABLES[table].names]
    return pa.schema([*TABLES[table], *extra])


def complete_rows(table: str, rows: list[dict]) -> list[dict]:
    """Rows with every registered kind's parameter columns: a kind's rows carry the others' at their default."""
    defaults = {p.name: p.default for p in params_of(table).values()}
    return [{**defaults, **row} for row in rows]


_check_params([p for k in KINDS.values() for p in k.params], "built in")
for _module in filter(None, (m.strip() for m in os.environ.get("ROBREP_KINDS", "").split(","))):
    importlib.import_module(_module)
