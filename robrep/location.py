"""Locations: every place robrep reads or writes is a local path or a pyarrow filesystem URI
(`s3://bucket/key`, `gs://…`, `file:///abs/path`). This module is the one place that tells them apart."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs


def is_uri(location: str | Path) -> bool:
    """True for `scheme://…` locations, False for local (or NFS) paths."""
    return "://" in str(location)


def absolute(location: str | Path) -> str:
    """A URI as given, or the absolute form of a local path."""
    return str(location) if is_uri(location) else str(Path(location).resolve())


def filesystem(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path within it) for a local path or a URI."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), str(Path(location).resolve())
