"""Fault injection points: where the tests that kill a process mid-work (a commit, a lease, a Tune trial) kill it,
and where the tests of failed jobs make a worker's batch fail."""

from __future__ import annotations

import os
import signal

_reached: dict[str, int] = {}


def fault_point(point: str) -> None:
    """Fault injection for the tests that kill a process mid-work: with ROBREP_FAULT=<point>:<n> set, the n-th
    time this process reaches <point> it is killed (SIGKILL), as a power loss or `kill -9` would. With
    ROBREP_FAULT_ONCE=<file> also set, only the first process to create that file dies (one Tune trial of many).
    Inert otherwise."""
    wanted = os.environ.get("ROBREP_FAULT", "")
    if not wanted.startswith(point + ":"):
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] != int(wanted.rsplit(":", 1)[1]):
        return
    if "ROBREP_FAULT_ONCE" in os.environ:
        try:
            os.close(os.open(os.environ["ROBREP_FAULT_ONCE"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def failure_point(point: str, key: str) -> None:
    """Fault injection for the tests of failed jobs: with ROBREP_FAIL=<point>:<key> in a worker's environment, every
    time it reaches <point> for <key> (a model_id) it raises, as a job whose code fails would. A checkpoint that
    does not load can no longer stand in for that: the plan loads every checkpoint first. Inert otherwise."""
    if os.environ.get("ROBREP_FAIL") == f"{point}:{key}":
        raise RuntimeError(f"injected failure at {point} for {key} (ROBREP_FAIL)")
