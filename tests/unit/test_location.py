"""Locations: one module (robrep/core/location.py) reads and writes whole files at a path or a URI; checkpoints, the
report and Tune's output go through it; FFCV data is staged from a URI to each node's local folder."""

from pathlib import Path

import pytest
import torch

from robrep.checkpoint import load_checkpoint, read_meta, save_checkpoint
from robrep.core.errors import ConfigError
from robrep.core.location import check, copy_file, exists, join, parent, read_bytes, write_bytes
from robrep.models import create_model


@pytest.mark.parametrize("value, message", [("s3:/b/x", "one slash"), ("ftp://h/x", "unknown scheme"),
                                            ("s3://", "names no bucket"), ("", "is empty")])
def test_a_location_that_would_become_a_stray_local_folder_is_an_error(value, message):
    with pytest.raises(ConfigError, match=message):
        check(value, "storage_path")


def test_paths_and_uris_compose_alike(tmp_path):
    assert check("s3://b/x/", "k") == "s3://b/x" and check("rel", "k") == str(Path("rel").resolve())
    assert parent("s3://b/x/store") == "s3://b/x" and parent("s3://b") == "s3://b"
    assert join("s3://b/x/", "models", "m") == "s3://b/x/models/m" and parent(str(tmp_path / "a")) == str(tmp_path)


def _roundtrip(root: str):
    write_bytes(join(root, "a", "b.bin"), b"x" * 1000)
    assert exists(join(root, "a", "b.bin")) and read_bytes(join(root, "a", "b.bin")) == b"x" * 1000
    with pytest.raises(FileNotFoundError):
        read_bytes(join(root, "a", "missing"))
    copy_file(join(root, "a", "b.bin"), join(root, "c", "d.bin"))
    assert read_bytes(join(root, "c", "d.bin")) == b"x" * 1000
    model = create_model("small_cnn", 10, [0.5] * 3, [0.25] * 3)
    folder = save_checkpoint(join(root, "models", "m"), model, {"arch": "small_cnn", "num_classes": 10,
                                                                "mean": [0.5] * 3, "std": [0.25] * 3})
    loaded, meta = load_checkpoint(folder)
    assert meta["digest"] == read_meta(folder)["digest"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_files_and_checkpoints_on_a_local_disk_leave_no_temp_file(tmp_path):
    _roundtrip(str(tmp_path))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
