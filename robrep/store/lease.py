"""One writer per store: a lease file (`<root>/_lease.json`: holder host, pid, run id, heartbeat) taken before
a fan-out's first commit and given back at its end. A second driver is refused at once (or waits, if asked);
a lease whose holder is dead (same host, no such pid) or silent (no heartbeat for STALE_S) is taken over.

On a local or NFS disk the lease is created with O_EXCL, so two drivers can never both hold it. Object stores
have no create-if-absent in pyarrow: there the lease is written, then read back after a pause, and the
driver that does not read its own run id back gives way.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.fs as pafs

from robrep.core.errors import RobrepError
from robrep.core.location import filesystem, write_atomic

LEASE = "_lease.json"
HEARTBEAT_S = 10.0
STALE_S = 120.0  # a lease without a heartbeat for this long belongs to a driver that is gone


class LeaseError(RobrepError):
    """Another driver writes to this store."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _alive(holder: dict) -> bool:
    """False when the holder is certainly gone: on this host without its pid, or silent for STALE_S."""
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    beat = datetime.fromisoformat(holder.get("heartbeat", "1970-01-01T00:00:00+00:00"))
    return (datetime.now(timezone.utc) - beat).total_seconds() < STALE_S


class StoreLease:
    """`with StoreLease(root, run_id):` holds the store's writer lease, with a heartbeat, until the block ends."""

    def __init__(self, root: str | Path, run_id: str, wait: bool = False, poll_s: float = 5.0,
                 hint: str = "wait for it to finish, or pass --set fanout.wait_for_lease=true to queue behind it"):
        self.hint = hint
        self.fs, base = filesystem(root)
        self.path, self.run_id, self.wait, self.poll_s = f"{base}/{LEASE}", run_id, wait, poll_s
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id, "started": _now()}
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)

    def __enter__(self) -> StoreLease:
        while not self._try_acquire():
            holder = self.holder()
            if not self.wait:
                raise LeaseError(
                    f"the store is being written by run {holder.get('run_id')} (host {holder.get('host')}, pid "
                    f"{holder.get('pid')}, since {holder.get('started')}, heartbeat {holder.get('heartbeat')}); "
                    f"{self.hint}")
            time.sleep(self.poll_s)
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._beat.join()
        with contextlib.suppress(FileNotFoundError):
            if self.holder().get("run_id") == self.run_id:
                self.fs.delete_file(self.path)

    def holder(self) -> dict:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                return json.loads(stream.read())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _write(self, exclusive: bool) -> bool:
        data = json.dumps({**self.record, "heartbeat": _now()}).encode()
        if exclusive and self.local:  # only one driver's create succeeds
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            return True
        write_atomic(self.fs, self.path, lambda out: out.write(data), durable=False)
        return True

    def _try_acquire(self) -> bool:
        holder = self.holder()
        if holder and _alive(holder):
            return False
        if holder:  # stale: move it aside (only one driver's rename succeeds), then create anew
            aside = f"{self.path}.stale-{holder.get('run_id')}"
            try:
                self.fs.move(self.path, aside)
            except FileNotFoundError:
                return False  # another driver took it over first
        if self.local:
            return self._write(exclusive=True)
        self._write(exclusive=False)
        time.sleep(2.0)  # object stores: the last writer wins; read back who that was
        return self.holder().get("run_id") == self.run_id

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self.holder().get("run_id") != self.run_id:
                return  # taken over after we went silent: stop claiming it
            self._write(exclusive=False)
