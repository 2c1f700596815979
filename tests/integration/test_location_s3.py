"""Locations on a real S3-protocol server (moto): files, checkpoints and staging."""

import json

import pytest
import torch

from robrep.checkpoint import load_checkpoint, read_meta, save_checkpoint
from robrep.core.location import copy_file, exists, join, read_bytes, write_bytes
from robrep.models import create_model


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


def test_files_and_checkpoints_on_s3(s3):
    """The same calls against a real S3 endpoint (moto's server), configured the standard AWS way."""
    _, bucket = s3
    _roundtrip(f"s3://{bucket}/location-test")


def test_staging_copies_a_split_once_per_node_and_again_when_it_changes(tmp_path, s3):
    from datasets.beton import sidecar_path
    from datasets.stage import stage, upload
    from robrep.core.errors import DataError

    _, bucket = s3
    built = tmp_path / "built" / "train.beton"
    built.parent.mkdir()
    built.write_bytes(b"beton-1")
    sidecar_path(built).write_text(json.dumps({"beton_size": 7, "fingerprint": "one"}))
    source = f"s3://{bucket}/stage-test/train.beton"
    local = tmp_path / "node" / "train.beton"
    with pytest.raises(DataError, match="has no train.json"):
        stage(local, source)
    upload(built, source)
    assert stage(local, source) == str(local) and local.read_bytes() == b"beton-1"
    stamp = local.stat().st_mtime_ns
    stage(local, source)
    assert local.stat().st_mtime_ns == stamp  # current: not copied again
    built.write_bytes(b"beton-22")
    sidecar_path(built).write_text(json.dumps({"beton_size": 8, "fingerprint": "two"}))
    upload(built, source)
    stage(local, source)
    assert local.read_bytes() == b"beton-22" and json.loads(sidecar_path(local).read_text())["fingerprint"] == "two"
    assert not [p for p in local.parent.iterdir() if p.name.endswith(".tmp")]
