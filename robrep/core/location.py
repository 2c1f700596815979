"""Locations: every place robrep reads or writes is a local path (a local disk or NFS) or a pyarrow filesystem
URI (`s3://bucket/key`, `gs://bucket/key`, `file:///abs/path`, `hdfs://…`). This module is the one place that
tells them apart, and the only one that reads or writes whole files at a location.

Object stores take their endpoint and credentials the standard way of their SDK: for S3, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (or an instance profile), AWS_DEFAULT_REGION and, for S3-compatible servers (MinIO,
Ceph), AWS_ENDPOINT_URL. Nothing here is specific to one server.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

from robrep.core.errors import ConfigError, StorageError
from robrep.core.faults import fault_point

SCHEMES = ("s3", "gs", "gcs", "file", "hdfs", "viewfs", "abfs", "abfss")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")


def is_uri(location: str | Path) -> bool:
    """True for `scheme://…` locations, False for local (or NFS) paths."""
    return "://" in str(location)


def check(location: str | Path, key: str) -> str:
    """The location, absolute, or a ConfigError that names `key`: a local path, or a URI of a scheme pyarrow
    reads (a path such as `s3:/b/x`, which would silently become a local folder named `s3:`, is refused)."""
    text = str(location).strip()
    if not text:
        raise ConfigError(f"{key} is empty: give a path or a URI such as s3://bucket/prefix")
    scheme = _SCHEME.match(text)
    if scheme and not is_uri(text):
        raise ConfigError(f"{key}={text!r} looks like a URI with one slash; write {scheme.group(1)}://...")
    if is_uri(text):
        name, rest = text.split("://", 1)
        if name.lower() not in SCHEMES:
            raise ConfigError(f"{key}={redact(text)!r}: unknown scheme {name!r}; use a path or one of "
                              f"{', '.join(s + '://' for s in SCHEMES)}")
        if name.lower() != "file" and not rest.split("/", 1)[0]:
            raise ConfigError(f"{key}={redact(text)!r} names no bucket or host: write {name}://bucket/prefix")
    return absolute(text)


def absolute(location: str | Path) -> str:
    """A URI as given, or the absolute form of a local path."""
    return str(location).rstrip("/") if is_uri(location) else str(Path(location).resolve())


def join(location: str | Path, *parts: str) -> str:
    """`location/part/...` for a path or a URI."""
    return "/".join([str(location).rstrip("/"), *parts])


def parent(location: str | Path) -> str:
    """The folder that holds `location` (for a bucket's root: the bucket itself)."""
    text = absolute(location)
    head, _, rest = text.partition("://") if is_uri(text) else ("", "", text)
    if "/" not in rest.strip("/"):
        return text
    folder = rest.rstrip("/").rsplit("/", 1)[0] or "/"
    return f"{head}://{folder}" if head else folder


def filesystem(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path within it) for a local path or a URI."""
    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(str(location))
        except (pafs.ArrowInvalid, OSError, ValueError) as e:  # ArrowInvalid is a ValueError
            raise StorageError(f"cannot open {redact(location)}: {e}") from e
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def exists(location: str | Path) -> bool:
    """True when a file is at the location."""
    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def check_writable(location: str | Path, key: str) -> str:
    """StorageError unless this process can create files at a local `location` (the folder, or the nearest folder
    above it that exists, where it is still to be made): a read-only disk or a folder without write permission is
    one error line before any work. A probe file is made there and removed. A URI is left to its first write, which
    robrep's writers turn into the same StorageError."""
    text = str(location)
    if is_uri(text):
        return text
    folder = Path(text).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    probe = folder / f".robrep-probe-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as e:
        raise StorageError(f"{key}={text!r} cannot be written: {folder} refused a new file ({e.strerror}); give a "
                           f"{key} on a disk and in a folder you can write") from e
    os.close(fd)
    probe.unlink()
    return text


def read_bytes(location: str | Path) -> bytes:
    """A whole file's bytes; FileNotFoundError when there is none."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"no file at {redact(location)}")
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _temp_beside(path: str) -> str:
    """A hidden, unique temp name in the folder of a local `path` (made if missing), to rename into place."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"


def fsync_folder(folder: str) -> None:
    """fsync a local folder: its entries (a rename, a deletion) survive a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(fs: pafs.FileSystem, path: str, write: Callable[[BinaryIO], None], durable: bool = True,
                 fault: str | None = None) -> str:
    """The one way robrep writes a whole file: no reader ever sees it half-written. On a local or NFS disk,
    write(file) fills a hidden temp file beside `path` (readers skip names starting with '.'), which is renamed into
    place; durable=True fsyncs it before the rename and its folder after (and a new folder's parent), so a power
    loss leaves the old file or the new one. On an object store, one PUT (visible only once complete).
    fault: the name of its fault points (<fault>.before_rename, <fault>.after_rename; robrep/faults.py)."""
    if not isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as out:
            write(out)
        return path
    folder = os.path.dirname(path)
    created = not os.path.isdir(folder)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as out:
            write(out)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        if fault:
            fault_point(f"{fault}.before_rename")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if fault:
        fault_point(f"{fault}.after_rename")
    if durable:
        fsync_folder(folder)
        if created:  # the new folder's own entry
            fsync_folder(os.path.dirname(folder))
    return path


def write_bytes(location: str | Path, data: bytes) -> str:
    """Write a whole file at a path or URI, atomically (write_atomic). Returns the location."""
    fs, path = filesystem(location)
    write_atomic(fs, path, lambda out: out.write(data))
    return str(location)


def copy_file(source: str | Path, target: str | Path, chunk: int = 1 << 24) -> None:
    """Copy one file between any two locations (upload, download, or within one), streamed in chunks, atomically
    (write_atomic)."""
    src_fs, src = filesystem(source)
    dst_fs, dst = filesystem(target)

    def stream(out: BinaryIO) -> None:
        with src_fs.open_input_stream(src) as inp:
            while block := inp.read(chunk):
                out.write(block)

    write_atomic(dst_fs, dst, stream)


def digest_bytes(data: bytes) -> str:
    """sha256 of bytes (hex, 32 characters), as file_digest."""
    return hashlib.sha256(data).hexdigest()[:32]


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
