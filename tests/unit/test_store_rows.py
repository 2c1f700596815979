"""The store's rows, in memory and on a local disk: a row on disk twice reads once, partition values read back
exactly, credentials never show."""

import json

import pandas as pd
import pytest
from helpers import SMOKE, result_rows

from robrep.core.errors import ConfigError


def test_a_row_on_disk_twice_is_read_once(tmp_path):
    from robrep.store import read_table
    from robrep.store.commit import commit_part, part_name
    from robrep.store.schema import RESULTS_SCHEMA, to_table

    table = to_table(result_rows(["a", "b"]), RESULTS_SCHEMA)
    commit_part(tmp_path, "results", table, {"kind": "invert", "model_id": "m"}, part_name(["a", "b"]))
    commit_part(tmp_path, "results", table, {"kind": "invert", "model_id": "m"}, "part-other-driver.parquet")
    assert len(pd.read_parquet(tmp_path / "results")) == 4  # what is on disk
    assert sorted(read_table(tmp_path, "results")["job_id"]) == ["a", "b"]  # what a reader gets


def test_partition_values_read_back_exactly_and_unsafe_names_are_refused(tmp_path):
    from robrep.store import read_table
    from robrep.store.commit import commit_part, part_name
    from robrep.store.schema import RESULTS_SCHEMA, to_table

    table = to_table(result_rows(["a"]), RESULTS_SCHEMA)
    commit_part(tmp_path, "results", table, {"kind": "invert", "model_id": "007"}, part_name(["a"]))
    frame = read_table(tmp_path, "results", filters=[("model_id", "=", "007")])
    assert frame["model_id"].tolist() == ["007"]
    for bad in ("../../x", "a%20b", "a/b", ".hidden", ""):
        with pytest.raises(ConfigError, match="is not a valid name"):
            commit_part(tmp_path, "results", table, {"kind": "invert", "model_id": bad}, part_name(["a"]))
    from jobs.config import load_config

    with pytest.raises(ConfigError, match=r"train.model_id='\.\./\.\./x' is not a valid name"):
        load_config(SMOKE, ["train.digits_robust.model_id=../../x"])
    assert not (tmp_path.parent / "x").exists()


def test_credentials_in_a_uri_are_redacted_everywhere_they_are_shown():
    from robrep.core.location import redact, redact_all

    assert redact("s3://AKIA123:s3cr3t@bucket/robrep/store") == "s3://***@bucket/robrep/store"
    assert redact("s3://bucket/store?access_key=AKIA&secret_key=s3cr3t&region=eu") == \
        "s3://bucket/store?access_key=***&secret_key=***&region=eu"
    assert redact("/local/store") == "/local/store"
    manifest = redact_all({"store": "gs://user:pw@b/s", "fanout": {"models": ["m"]}, "steps": 3})
    assert "pw" not in json.dumps(manifest) and manifest["fanout"] == {"models": ["m"]}
