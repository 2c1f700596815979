"""Typed errors. Each message says what was wrong and how to fix it."""


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
