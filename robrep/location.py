"""Locations: every place robrep reads or writes is a local path or a pyarrow filesystem URI
(`s3://bucket/key`, `gs://…`, `file:///abs/path`). This module is the one place that tells them apart."""

from __future__ import annotations

import hashlib
import re
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


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex, 32 characters): the identity of a checkpoint's weights or a dataset."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


_SECRET_QUERY = re.compile(r"([?&][^=&]*(?:key|secret|token|password|credential)[^=&]*=)[^&]*", re.IGNORECASE)


def redact(location: str | Path) -> str:
    """The location with any credentials in it (`s3://KEY:SECRET@bucket`, `?secret_key=...`) replaced by ***,
    for messages, manifests and reports."""
    text = str(location)
    if not is_uri(text):
        return text
    scheme, rest = text.split("://", 1)
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return _SECRET_QUERY.sub(r"\1***", f"{scheme}://{authority}{slash}{path}")


def redact_all(value):
    """redact() applied to every URI string inside plain data (dicts, lists)."""
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_all(v) for v in value]
    return redact(value) if isinstance(value, str) else value
