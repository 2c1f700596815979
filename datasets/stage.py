"""Staging: FFCV reads POSIX files, so on nodes that share no disk each node copies the .beton it reads from
a shared location (`data.stage_from`: an object store URI or an NFS folder) to its own `data.dir`, once.

A staged split is the pair <name>.beton + <name>.json. The sidecar is written last and is the marker: a copy
interrupted half-way leaves no sidecar, so the next reader copies again. One lock file per split serialises
the processes of one node, so a node copies each split once however many workers start together.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

from datasets.beton import sidecar_path
from robrep.core.errors import DataError, StorageError
from robrep.core.location import copy_file, read_bytes, redact, write_bytes


def _sidecar(location: str) -> str:
    return location[: -len(".beton")] + ".json" if location.endswith(".beton") else location + ".json"


def _current(local: Path, sidecar: bytes) -> bool:
    """The local pair is the staged one: the same sidecar, and a .beton of the size it names."""
    side = sidecar_path(local)
    if not (local.is_file() and side.is_file()) or side.read_bytes() != sidecar:
        return False
    return json.loads(sidecar).get("beton_size", local.stat().st_size) == local.stat().st_size


def stage(local: str | Path, source: str | None) -> str:
    """The path of `local` on this node, copied from `source` (a .beton at a path or URI) first when this node
    has no current copy. With source None, `local` is returned as it is."""
    if source is None:
        return str(local)
    local = Path(local)
    try:
        sidecar = read_bytes(_sidecar(source))
    except FileNotFoundError as e:
        raise DataError(f"data.stage_from has no {Path(_sidecar(source)).name} at {redact(source)}: build the data "
                        "with jobs.build_dataset (or jobs.main) and data.stage_from set, or upload it there") from e
    except (OSError, StorageError) as e:
        raise DataError(f"cannot read {redact(_sidecar(source))} to stage it: {e}") from e
    if _current(local, sidecar):
        return str(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    with open(local.parent / f".{local.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process of this node may be copying the same split
        if _current(local, sidecar):
            return str(local)
        sidecar_path(local).unlink(missing_ok=True)  # no sidecar until the .beton beside it is whole
        try:
            copy_file(source, local)
        except FileNotFoundError as e:
            raise DataError(f"data.stage_from has {Path(_sidecar(source)).name} but not {local.name}: upload both") \
                from e
        write_bytes(str(sidecar_path(local)), sidecar)
    return str(local)


def upload(local: str | Path, target: str) -> None:
    """Copy a built .beton and its sidecar to `target` (a .beton location), the sidecar last."""
    copy_file(str(local), target)
    copy_file(str(sidecar_path(local)), _sidecar(target))
