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


def test_a_store_on_s3_prunes_compacts_and_fetches_images(s3):
    """The store's read, compaction and image paths against S3, where folders are key prefixes."""
    from helpers import grow_store

    from robrep.store import committed_job_ids, load_images, load_results, read_table
    from robrep.store.compact import compact

    _, bucket = s3
    root = f"s3://{bucket}/store-scale"
    grow_store(root, parts=8, models=("007", "m1"), kinds=("invert", "pairs"))
    before = read_table(root, "results").sort_values("job_id").reset_index(drop=True)
    assert len(before) == 40 and set(before["model_id"]) == {"007", "m1"}
    one = load_results(root, filters=[("kind", "=", "pairs"), ("model_id", "=", "007")])
    assert len(one) == 10 and set(one["kind"]) == {"pairs"}
    done = compact(root, "results")
    assert sorted((c.folder, c.parts_before, c.parts_after) for c in done) == [
        (f"results/kind={k}/model_id={m}", 2, 1)
        for k in ("invert", "pairs") for m in ("007", "m1")]
    assert read_table(root, "results").sort_values("job_id").reset_index(drop=True).equals(before)
    assert len(committed_job_ids(root, filters=[("kind", "in", ["invert"])])) == 20
    images = load_images(root, one, decode=True)
    assert images["image"].notna().all() and images["image"].iloc[0].shape == (8, 8, 3)
