"""Where Ray Train and Ray Tune keep their runs: `storage_path` as a path or a URI, on the same pyarrow
filesystem (endpoint, credentials) as robrep's store (robrep.core.location)."""

from __future__ import annotations

from robrep.core.location import filesystem, is_uri


def storage_options(location: str) -> dict:
    """RunConfig keywords: storage_path, plus storage_filesystem for a URI."""
    if not is_uri(location):
        return {"storage_path": location}
    fs, path = filesystem(location)
    return {"storage_path": path, "storage_filesystem": fs}
