"""The store: schema round trip, atomic parts, no duplicates on retry."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import result_rows

from robrep.images import decode_png, encode_png
from robrep.store import committed_job_ids, read_table
from robrep.store.commit import commit_part, part_name
from robrep.store.schema import RESULTS_SCHEMA, to_table


def test_png_round_trip_is_8_bit_exact():
    image = torch.rand(3, 5, 7)
    decoded = decode_png(encode_png(image))
    assert decoded.shape == (5, 7, 3)
    np.testing.assert_array_equal(decoded, (image * 255).round().byte().permute(1, 2, 0).numpy())


def test_schema_round_trip_and_retry_overwrites(tmp_path):
    rows = result_rows(["a", "b", "c"])
    table = to_table(rows, RESULTS_SCHEMA)
    part = part_name(["a", "b", "c"])
    commit_part(tmp_path, "results", table, {"kind": "invert", "model_id": "m1"}, part)
    commit_part(tmp_path, "results", table, {"kind": "invert", "model_id": "m1"}, part)  # a retry
    commit_part(tmp_path, "results", to_table(result_rows(["d"], "m2"), RESULTS_SCHEMA),
                {"kind": "invert", "model_id": "m2"}, part_name(["d"]))
    df = read_table(tmp_path, "results")
    assert sorted(df["job_id"]) == ["a", "b", "c", "d"]
    assert committed_job_ids(tmp_path) == {"a", "b", "c", "d"}
    assert set(df.columns) == set(RESULTS_SCHEMA.names)
    only_m2 = read_table(tmp_path, "results", filters=[("model_id", "=", "m2")])
    assert list(only_m2["job_id"]) == ["d"]
    assert not list(tmp_path.rglob("*.tmp"))
    assert pd.isna(df["activation"]).all()


def test_empty_store_reads_as_empty_frame(tmp_path):
    df = read_table(tmp_path, "results")
    assert len(df) == 0 and "rep_dist_rel" in df.columns


def test_a_filesystem_uri_root_works_like_a_path(tmp_path):
    from robrep.store.commit import write_manifest

    root = f"file://{tmp_path}/s"
    commit_part(root, "results", to_table(result_rows(["x", "y"]), RESULTS_SCHEMA), {"kind": "invert", "model_id": "m"},
                part_name(["x", "y"]))
    write_manifest(root, "run1", {"jobs": 2})
    assert committed_job_ids(root) == {"x", "y"}
    assert sorted(read_table(root, "results")["job_id"]) == ["x", "y"]
    assert (tmp_path / "s" / "_manifests" / "run1.json").is_file()


def test_query_helper_decodes_images_and_builds_a_grid(tmp_path):
    from robrep.report.figures import image_grid
    from robrep.store import load_results

    commit_part(tmp_path, "results", to_table(result_rows(["a", "b", "c"]), RESULTS_SCHEMA),
                {"kind": "invert", "model_id": "m1"}, part_name(["a", "b", "c"]))
    df = load_results(tmp_path, filters=[("kind", "=", "invert")], decode_images=True)
    assert df["image"].iloc[0].shape == (8, 8, 3)
    grid = image_grid(df, ncols=2, caption="job_id", scale=2)
    assert grid.size == (2 * 18, 2 * (16 + 12 + 2))


def test_summary_counts_inversions_that_end_nearer_the_target():
    from robrep.report import summary_table

    models = pd.DataFrame({"model_id": ["m"], "robust": [True], "eps": [1.0], "clean_acc": [0.9], "adv_acc": [0.5],
                           "created_at": [pd.Timestamp.now(tz="UTC")]})
    results = pd.DataFrame({
        "kind": ["invert"] * 4, "model_id": ["m"] * 4, "init": ["image", "image", "image", "noise"],
        "source_class": [1, 1, 2, -1], "target_class": [0, 0, 0, 0],
        "pix_dist_target": [1.0, 1.0, 5.0, 1.0], "pix_dist_source": [3.0, 4.0, 2.0, 9.0],
        "rep_dist_rel": [0.1] * 4,
    })
    summary = summary_table(models, results).set_index("model_id")
    assert summary.loc["m", "other_class_nearer_target"] == pytest.approx(2 / 3)  # nearer the target in 2 of 3
    assert summary.loc["m", "other_class_jobs"] == 3 and summary.loc["m", "jobs"] == 4
