"""Locations on a real S3-protocol server (moto): files, checkpoints and staging."""

import json

import pytest
from helpers import location_roundtrip


def test_files_and_checkpoints_on_s3(s3):
    """The same calls against a real S3 endpoint (moto's server), configured the standard AWS way."""
    _, bucket = s3
    location_roundtrip(f"s3://{bucket}/location-test")


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
