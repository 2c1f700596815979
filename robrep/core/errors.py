"""Typed errors. Each message says what was wrong and how to fix it."""

import re


class RobrepError(Exception):
    """Base class: entry points turn these into a one-line message and a non-zero exit."""


class ConfigError(RobrepError):
    """A config key, value or type is wrong."""


class DataError(RobrepError):
    """A dataset file is missing, corrupt or inconsistent."""


class CheckpointError(RobrepError):
    """A checkpoint is missing or does not match what loads it."""


class StorageError(RobrepError):
    """A location cannot be opened: unknown bucket, no credentials, unreachable endpoint."""


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes (Ray colours the task names of its tracebacks)


def one_line(message: str) -> str:
    """A message as one line without terminal colour codes, whatever it holds."""
    return " ".join(ANSI.sub("", message).split())


def robrep_cause(error: BaseException) -> RobrepError | None:
    """The robrep error behind `error`: itself, or the one a Ray task, actor, Train worker or Tune trial raised.
    Ray hands such an error back wrapped: as its own copy (RayTaskError(CheckpointError), whose text is the worker's
    traceback, with the original in `.cause`), inside Train's worker-group error (`.worker_failures`), or chained
    (`__cause__`). None: an unexpected failure, which keeps its traceback."""
    stack, seen = [error], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        inner = getattr(e, "cause", None)
        if isinstance(e, RobrepError) and not isinstance(inner, BaseException):
            return e
        failures = getattr(e, "worker_failures", None)
        stack += [*(failures.values() if isinstance(failures, dict) else ()), e.__cause__, inner]
    return None
