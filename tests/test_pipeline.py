"""The smoke pipeline through the real entry points on a real local Ray: train, fan out, report, tune,
resume, and the errors a user meets first."""

import pandas as pd
import pytest
import yaml
from conftest import run_module, store_overrides

SMOKE = "jobs/configs/digits_smoke.yaml"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """jobs.main on the smoke config, once for this module: (tmp folder, the finished process)."""
    tmp = tmp_path_factory.mktemp("smoke")
    proc = run_module("jobs.main", "--config", SMOKE, *store_overrides(tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, proc


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_main_smoke_writes_every_kind_then_a_rerun_skips_everything(smoke):
    tmp, first = smoke
    assert "== summary" in first.stdout and "other_class_nearer_target" in first.stdout
    assert "[main] report:" in first.stdout

    results = pd.read_parquet(tmp / "store" / "results")
    models = pd.read_parquet(tmp / "store" / "models")
    assert sorted(models["model_id"]) == ["digits_robust", "digits_standard"]
    assert models["clean_acc"].between(0, 1).all()
    assert len(results) == 62  # 48 result jobs; each of the 4 top_activating jobs writes 2k = 4 rows
    representations = pd.read_parquet(tmp / "store" / "representations")
    assert len(representations) == 2 * 359 and len(representations["representation"].iloc[0]) == 128
    assert results[results["kind"] != "top_activating"]["job_id"].is_unique
    assert (results[results["kind"] == "invert"].groupby("model_id").size() == 12).all()
    assert set(results["kind"]) == {"invert", "invert_sweep", "pairs", "visualize", "manipulate", "interpolate",
                                    "top_activating"}
    inverted = results[results["kind"] == "invert"]
    for column in ("run_id", "model_id", "rep_dist", "rep_dist_rel", "pix_dist_target", "pix_dist_source",
                   "image_png", "steps", "eps", "step_size", "init", "git_sha"):
        assert inverted[column].notna().all(), column
    image_rows = inverted[inverted["init"] == "image"]
    assert (image_rows["source_class"] != image_rows["target_class"]).all()
    assert list((tmp / "store" / "_manifests").glob("*.json"))
    assert len(pd.read_parquet(tmp / "store" / "train_metrics")) == 4  # 2 models x 2 epochs

    second = run_module("jobs.fanout", "--config", SMOKE, *store_overrides(tmp))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "52 jobs, 52 already in the store, 0 to run" in second.stdout
    assert len(pd.read_parquet(tmp / "store" / "results")) == 62


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_report_has_every_figure(smoke):
    from jobs.report import build_report

    tmp, _ = smoke
    report = build_report(str(tmp / "store"), tmp / "report")
    names = {p.stem for p in report.figures}
    assert names == {"inversion_image", "inversion_noise", "fig4_sweep", "fig7_visualize_digits_robust",
                     "fig7_visualize_digits_standard", "fig11_manipulate", "fig12_interpolate",
                     "fig8_top_digits_robust", "fig8_top_digits_standard"}
    assert all(p.stat().st_size > 200 for p in report.figures)
    assert set(report.missing) <= {"tune_trials"}
    page = (tmp / "report" / "report.html").read_text()
    assert page.count("<img") == 9 and "Table 4/5" in page and "digits_robust" in page


def test_report_on_an_empty_store_says_what_is_missing(tmp_path):
    from jobs.report import build_report

    report = build_report(str(tmp_path / "empty"), tmp_path / "report")
    assert not report.figures
    assert {"models", "invert rows", "invert_sweep rows", "results"} <= set(report.missing)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Missing: invert_sweep rows" in page


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_tune_runs_trials_and_its_best_beats_the_default_on_held_out_images(smoke):
    tmp, _ = smoke
    best_file = tmp / "tune_best.yaml"
    proc = run_module("jobs.tune", "--config", SMOKE, *store_overrides(tmp), "--set", f"tune.output={best_file}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = pd.read_parquet(tmp / "store" / "tune_trials")
    assert len(trials) >= 8 and trials["metric"].notna().all()
    best = yaml.safe_load(best_file.read_text())
    assert best["holdout_metric"] <= best["default"]["holdout_metric"]

    used = run_module("jobs.fanout", "--config", SMOKE, *store_overrides(tmp), "--from-tune", str(best_file))
    assert used.returncode == 0, used.stderr[-3000:]
    assert "0 already in the store" not in used.stdout  # new settings, new job ids
    results = pd.read_parquet(tmp / "store" / "results", filters=[("kind", "=", "invert")])
    assert (abs(results["step_size"] - best["step_size"]) < 1e-6).any()


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
