"""The smoke pipeline through the real entry points on a real local Ray: train, fan out, resume, errors."""

import pandas as pd
import pytest
from conftest import run_module, store_overrides

SMOKE = "jobs/configs/digits_smoke.yaml"


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_main_smoke_then_rerun_skips_everything(tmp_path):
    sets = store_overrides(tmp_path)
    first = run_module("jobs.main", "--config", SMOKE, *sets)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "== summary" in first.stdout and "other_class_nearer_target" in first.stdout

    results = pd.read_parquet(tmp_path / "store" / "results")
    models = pd.read_parquet(tmp_path / "store" / "models")
    assert sorted(models["model_id"]) == ["digits_robust", "digits_standard"]
    assert models["clean_acc"].between(0, 1).all()
    assert len(results) == 62  # 50 jobs; each of the 4 top_activating jobs writes 2k = 4 rows
    assert results[results["kind"] != "top_activating"]["job_id"].is_unique
    assert (results[results["kind"] == "invert"].groupby("model_id").size() == 12).all()
    assert set(results["kind"]) == {"invert", "invert_sweep", "pairs", "visualize", "manipulate", "interpolate",
                                    "top_activating"}
    inverted = results[results["kind"] == "invert"]
    for column in ("run_id", "model_id", "rep_dist", "rep_dist_rel", "pix_dist_target", "pix_dist_source",
                   "image_png", "steps", "eps", "step_size", "init", "git_sha"):
        assert inverted[column].notna().all(), column
    image_rows = results[(results["init"] == "image") & (results["kind"] == "invert")]
    assert (image_rows["source_class"] != image_rows["target_class"]).all()
    assert list((tmp_path / "store" / "_manifests").glob("*.json"))

    second = run_module("jobs.fanout", "--config", SMOKE, *sets)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "50 jobs, 50 already in the store, 0 to run" in second.stdout
    assert len(pd.read_parquet(tmp_path / "store" / "results")) == 62


def test_unknown_config_key_exits_nonzero_with_message(tmp_path):
    proc = run_module("jobs.main", "--config", SMOKE, "--set", "fanout.stepz=3", *store_overrides(tmp_path))
    assert proc.returncode == 2
    assert "unknown config key 'fanout.stepz'" in proc.stderr
    assert not (tmp_path / "store").exists()


def test_missing_dataset_exits_nonzero_with_message(tmp_path):
    proc = run_module("jobs.train", "--config", SMOKE, *store_overrides(tmp_path))
    assert proc.returncode == 2
    assert "DataError" in proc.stderr and "train.beton" in proc.stderr and "does not exist" in proc.stderr


def test_fanout_with_untrained_model_exits_nonzero(tmp_path):
    build = run_module("jobs.build_dataset", "--config", SMOKE, *store_overrides(tmp_path))
    assert build.returncode == 0, build.stderr[-2000:]
    proc = run_module("jobs.fanout", "--config", SMOKE, *store_overrides(tmp_path))
    assert proc.returncode == 2
    assert "'digits_standard' is not in the store's models table" in proc.stderr
