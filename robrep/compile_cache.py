"""torch.compile's results shared by every worker on every node, through the store (`<store>/compile_cache/`).

On one node, every process compiles into one folder (Inductor's cache, TORCHINDUCTOR_CACHE_DIR, by default under
/tmp), so the second worker of a node finds the first one's graphs there. Across nodes that share nothing but the
store, a worker that compiled something new publishes that folder (FX graphs, AOTAutograd entries, compiled kernels
and, on a GPU, Triton's kernels and autotuning) as one .tar.gz of its own (each publish rewrites it with everything
the folder holds then), and a worker that starts on any node unpacks every published file of its torch version and
device into its own folder before its first compilation, so that compilation is a cache hit. Only a worker that
compiled something the files lacked publishes: the store holds one file per worker that had to compile. Files are
read and written with robrep's storage calls (a local or NFS folder, or S3): a killed worker leaves no half-written
file, and an unpacked file appears whole (written beside, then renamed).

Why the folder and not torch.compiler.save_cache_artifacts: on torch 2.14 a fresh process that loaded those found 1
of the 4 graphs of a compiled FastModel (representation with the fake ReLU, its backward, the logits); from a copy of
the folder it found 4 of 4 (tests/integration/test_compile_cache.py). Measured on this machine's CPU (small CNN): the
first compiled step takes 26-28 s from nothing, 6 s from a warm folder.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import uuid
from pathlib import Path

import torch
from pyarrow import fs as pafs

from robrep.core.location import filesystem, join, read_bytes, write_bytes

FOLDER = "compile_cache"
log = logging.getLogger(__name__)


def _prefix(device_type: str) -> str:
    """Artifacts are valid for one torch build on one kind of device."""
    kind = torch.cuda.get_device_name().replace(" ", "_") if device_type == "cuda" else "cpu"
    return f"torch{torch.__version__.replace('+', '_')}-{kind}-"


def counters() -> dict[str, int]:
    """Inductor's FX-graph cache hits and misses in this process so far."""
    from torch._dynamo.utils import counters as all_counters

    inductor = all_counters["inductor"]
    return {"hit": int(inductor["fxgraph_cache_hit"]), "miss": int(inductor["fxgraph_cache_miss"])}


def _folder() -> Path:
    """This node's Inductor cache folder (TORCHINDUCTOR_CACHE_DIR, or Inductor's default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


def pack(folder: Path) -> bytes:
    """The folder's files (not its lock files) as a .tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if path.is_file() and not path.is_symlink() and relative.parts[0] != "locks" and path.suffix != ".lock":
                tar.add(path, arcname=str(relative), recursive=False)
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> int:
    """The archive's regular files that the folder lacks, each written beside and renamed into place (a worker
    compiling meanwhile sees a file whole or not at all); returns how many. Names that would leave the folder are
    refused."""
    added = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            target = (folder / member.name).resolve()
            if not member.isfile() or not target.is_relative_to(folder.resolve()):
                continue
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            temp.write_bytes(tar.extractfile(member).read())
            temp.chmod(member.mode & 0o755 | 0o600)
            os.replace(temp, target)
            added += 1
    return added


class CompileCache:
    """One process's view of `<store>/compile_cache/` for `device_type`: load() once before compiling, publish() after
    a compilation (it writes only when this process compiled something its node's folder lacked)."""

    def __init__(self, store: str, device_type: str):
        self.folder, self.prefix = join(store, FOLDER), _prefix(device_type)
        self.own = join(self.folder, f"{self.prefix}{uuid.uuid4().hex[:16]}.tar.gz")  # this process's file
        self.loaded, self.published_misses = False, 0

    def files(self) -> list[str]:
        fs, base = filesystem(self.folder)
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        return sorted(join(self.folder, i.base_name) for i in infos
                      if i.type == pafs.FileType.File and i.base_name.startswith(self.prefix)
                      and i.base_name.endswith(".tar.gz"))

    def load(self) -> int:
        """Unpack every published file of this torch and device into this node's folder (once per process);
        returns how many files were added."""
        if self.loaded:
            return 0
        self.loaded = True
        added = 0
        for location in self.files():
            try:
                added += unpack(read_bytes(location), _folder())
            except (tarfile.TarError, EOFError, OSError) as e:  # compiling anew is correct, only slower
                log.warning("compile cache: %s not loaded (%s: %s); compiling without it", location,
                            type(e).__name__, e)
        return added

    def publish(self) -> str | None:
        """Publish this node's folder (into this process's own file) if this process compiled anything since its last
        publish; returns the file."""
        misses = counters()["miss"]
        if misses == self.published_misses:
            return None
        self.published_misses = misses
        return write_bytes(self.own, pack(_folder()))


_PROCESS: dict[tuple[str, str], CompileCache] = {}


def shared(store: str, device: str | torch.device, compile: bool) -> CompileCache | None:
    """This process's cache of `store` for `device` (one per process: its files are loaded once), or None when
    nothing is compiled or no store is given."""
    if not (compile and store):
        return None
    key = (store, torch.device(device).type)
    if key not in _PROCESS:
        _PROCESS[key] = CompileCache(*key)
    return _PROCESS[key]
