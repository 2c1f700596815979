"""Locations: one module (robrep/core/location.py) reads and writes whole files at a path or a URI; checkpoints, the
report and Tune's output go through it; FFCV data is staged from a URI to each node's local folder."""

from pathlib import Path

import pytest
from helpers import location_roundtrip

from robrep.core.errors import ConfigError
from robrep.core.location import check, join, parent


@pytest.mark.parametrize("value, message", [("s3:/b/x", "one slash"), ("ftp://h/x", "unknown scheme"),
                                            ("s3://", "names no bucket"), ("", "is empty")])
def test_a_location_that_would_become_a_stray_local_folder_is_an_error(value, message):
    with pytest.raises(ConfigError, match=message):
        check(value, "storage_path")


def test_paths_and_uris_compose_alike(tmp_path):
    assert check("s3://b/x/", "k") == "s3://b/x" and check("rel", "k") == str(Path("rel").resolve())
    assert parent("s3://b/x/store") == "s3://b/x" and parent("s3://b") == "s3://b"
    assert join("s3://b/x/", "models", "m") == "s3://b/x/models/m" and parent(str(tmp_path / "a")) == str(tmp_path)




def test_files_and_checkpoints_on_a_local_disk_leave_no_temp_file(tmp_path):
    location_roundtrip(str(tmp_path))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
