"""The smoke pipeline through the real entry points on a real local Ray: train, fan out, report, tune,
resume, and the errors a user meets first."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import SMOKE, run_module, store_overrides


@pytest.fixture
def smoke(trained_pair, tmp_path):
    """A private copy of the session's trained pair (data, checkpoints, store), free to change."""
    shutil.copytree(trained_pair[0], tmp_path, dirs_exist_ok=True)
    return tmp_path, trained_pair[1]


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_main_smoke_writes_every_kind_then_a_rerun_of_main_skips_everything(smoke):
    tmp, first = smoke
    assert "== summary" in first.stdout and "other_class_nearer_target" in first.stdout
    assert "[main] report:" in first.stdout

    results = pd.read_parquet(tmp / "store" / "results")
    models = pd.read_parquet(tmp / "store" / "models")
    assert sorted(models["model_id"]) == ["digits_robust", "digits_standard"]
    assert models["clean_acc"].between(0, 1).all()
    assert len(results) == 68  # 52 result jobs; each of the 4 top_activating jobs writes 2k = 4 rows
    representations = pd.read_parquet(tmp / "store" / "representations")
    assert len(representations) == 2 * 359 and len(representations["representation"].iloc[0]) == 128
    assert results[results["kind"] != "top_activating"]["job_id"].is_unique
    assert (results[results["kind"] == "invert"].groupby("model_id").size() == 14).all()
    outside = results[results["dataset"] == "glyphs"]  # targets_from: shapes and letters, not digits
    assert len(outside) == 4 and set(outside["target_index"]) == {4, 16} and set(outside["split"]) == {"glyphs"}
    assert set(outside["target_class"]) == {1, 4} and (outside["init"] == "noise").all()  # square, A
    images = pd.read_parquet(tmp / "store" / "images")
    assert set(images[images["dataset"] == "glyphs"]["index"]) == {4, 16}
    assert set(results["kind"]) == {"invert", "invert_sweep", "pairs", "visualize", "manipulate", "interpolate",
                                    "top_activating", "regularized_visualize"}
    inverted = results[results["kind"] == "invert"]
    for column in ("run_id", "model_id", "rep_dist", "rep_dist_rel", "pix_dist_target", "pix_dist_source",
                   "image_png", "steps", "eps", "step_size", "init", "git_sha"):
        assert inverted[column].notna().all(), column
    regularized = results[results["kind"] == "regularized_visualize"]
    direct = results[(results["kind"] == "visualize") & (results["model_id"] == "digits_standard")
                     & (results["init"] == "gray")].set_index("coordinate")
    assert set(regularized["model_id"]) == {"digits_standard"} and (regularized["jitter"] == 1).all()
    assert (regularized["max_degrees"] == 10).all()
    assert (results.loc[results["kind"] != "regularized_visualize", "jitter"] == 0).all()
    for row in regularized.itertuples():  # the same start and coordinate, moved by jitter and rotation
        assert row.coordinate in direct.index and row.image_png != direct.loc[row.coordinate, "image_png"]
    image_rows = inverted[inverted["init"] == "image"]
    assert (image_rows["source_class"] != image_rows["target_class"]).all()
    manifests = list((tmp / "store" / "_manifests").glob("*.json"))
    assert len(manifests) == 1
    resolved = json.loads(manifests[0].read_text())["config"]  # every default filled in
    assert resolved["fanout"]["jobs"][0]["constraint"] == "l2" and resolved["fanout"]["max_retries"] == 3
    assert resolved["train"][1]["attack"]["restarts"] == 1
    assert len(pd.read_parquet(tmp / "store" / "train_metrics")) == 16  # 2 models x 8 epochs

    second = run_module("jobs.main", "--config", SMOKE, *store_overrides(tmp))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("already in the models table, skipped") == 2
    assert "58 jobs, 58 already in the store, 0 to run" in second.stdout
    assert "[data] using" in second.stdout
    assert len(pd.read_parquet(tmp / "store" / "results")) == 68
    assert len(pd.read_parquet(tmp / "store" / "train_metrics")) == 16
    assert pd.read_parquet(tmp / "store" / "models")["created_at"].tolist() == models["created_at"].tolist()


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_main_console_is_quiet(trained_pair):
    """Every line of jobs.main's stdout is one of ours; Ray's per-report and internal lines stay in its logs."""
    _, proc = trained_pair
    ours = ("[data]", "[train]", "[fanout]", "[main]", "== summary", "")
    lines = proc.stdout.splitlines()
    summary = lines.index(next(line for line in lines if line.startswith("== summary")))
    table = set(range(summary + 1, summary + 4))  # the summary table: a header and a row per model
    strays = [line for n, line in enumerate(lines) if n not in table and not line.startswith(ours)]
    assert not strays, strays
    assert "TrainingReport" not in proc.stderr and "core_worker" not in proc.stderr


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_report_has_every_figure(smoke):
    from robrep.report import build_report

    tmp, _ = smoke
    report = build_report(str(tmp / "store"), str(tmp / "report"))
    names = {Path(p).stem for p in report.figures}
    assert names == {"inversion_image", "inversion_noise", "fig4_sweep", "fig7_visualize_digits_robust",
                     "fig7_visualize_digits_standard", "fig11_manipulate", "fig12_interpolate",
                     "fig8_top_digits_robust", "fig8_top_digits_standard", "sec2_pairs_digits_standard",
                     "fig10_regularized", "ood_inversion_glyphs_noise"}
    assert all(Path(p).stat().st_size > 200 for p in report.figures)
    assert set(report.missing) <= {"tune_trials"}
    page = (tmp / "report" / "report.html").read_text()
    assert page.count("<img") == 12 and "Table 4/5" in page and "digits_robust" in page


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_every_figure_draws_every_row_of_the_last_run(smoke):
    """Each figure's cells (grids: images; Fig. 4: points) against the rows the smoke run wrote (all within the
    figures' caps): every result row is drawn, beside its target and source images where the figure shows them."""
    from robrep.report import build_report, current_results

    tmp, _ = smoke
    report = build_report(str(tmp / "store"), str(tmp / "report"))
    rows = current_results(str(tmp / "store"))
    assert len(rows) == len(pd.read_parquet(tmp / "store" / "results")), "one run: every row is current"
    of = {kind: part for kind, part in rows.groupby("kind")}
    inverted = of["invert"][of["invert"]["split"] == "test"]
    image, noise = inverted[inverted["init"] == "image"], inverted[inverted["init"] == "noise"]
    outside = of["invert"][of["invert"]["split"] == "glyphs"]
    regularized, direct = of["regularized_visualize"], of["visualize"]
    expected = {
        "inversion_image": len(image) + 2 * image["target_index"].nunique(),  # + target and source
        "inversion_noise": len(noise) + noise["target_index"].nunique(),  # + target
        "ood_inversion_glyphs_noise": len(outside) + outside["target_index"].nunique(),
        "fig4_sweep": of["invert_sweep"].groupby(["model_id", "eps"]).ngroups,  # every radius of every model
        "fig11_manipulate": len(of["manipulate"]) + of["manipulate"]["source_index"].nunique(),
        "fig12_interpolate": len(of["interpolate"]),  # every lambda
        "fig10_regularized": len(regularized) + len(direct.merge(
            regularized[["init", "source_index", "coordinate"]].drop_duplicates())),
    }
    for model_id, part in direct.groupby("model_id"):
        starts = part[["init", "source_index"]].drop_duplicates()
        expected[f"fig7_visualize_{model_id}"] = len(part) + int((starts["source_index"] >= 0).sum())
    for model_id, part in of["top_activating"].groupby("model_id"):
        expected[f"fig8_top_{model_id}"] = len(part)
    for model_id, part in of["pairs"].groupby("model_id"):
        expected[f"sec2_pairs_{model_id}"] = 3 * len(part)
    assert report.cells == expected
    assert len(of["invert_sweep"]["eps"].unique()) == 2 and of["interpolate"]["lam"].nunique() == 3


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_tune_records_its_trials_and_scores_the_best_on_held_out_images(smoke):
    from datasets.beton import read_indices
    from robrep.checkpoint import load_checkpoint
    from robrep.experiments import tuning_problem
    from robrep.fast import FastModel
    from robrep.pgd import pgd

    tmp, _ = smoke
    best_file = tmp / "tune_best.yaml"
    proc = run_module("jobs.tune", "--config", SMOKE, *store_overrides(tmp), "--set", f"tune.output={best_file}",
                      "--set", "tune.num_samples=4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = pd.read_parquet(tmp / "store" / "tune_trials")
    assert len(trials) == 4 and trials["metric"].notna().all()
    assert ((trials["step_size"] - 0.1).abs() < 1e-6).any()  # the config's default runs as one trial
    best = yaml.safe_load(best_file.read_text())
    finished = trials[trials["steps_done"] == trials["steps"]]
    assert best["tuning_metric"] == pytest.approx(float(finished["metric"].min()), rel=1e-5)
    # The held-out numbers, recomputed here on the held-out images, without Ray.
    model = load_checkpoint(pd.read_parquet(tmp / "store" / "models").set_index("model_id")
                            .loc["digits_robust", "checkpoint"])[0]
    images, labels = read_indices(tmp / "data" / "test.beton", list(range(100, 108)))
    # PGD runs on the FastModel the trials use (batch norm folded into the convolutions): on the unfolded model the
    # last bits differ and 40 steps carry them to 2e-3 relative. On it the numbers are equal, at 1 and 2 threads
    # alike (measured).
    fast = FastModel(model, "cpu", "fp32", False)
    for settings, expected in ((best, best["holdout_metric"]), (best["default"], best["default"]["holdout_metric"])):
        loss_fn, x0, measure = tuning_problem(model, images, labels, "inversion", fast=fast)
        x = pgd(loss_fn, x0, eps=1000.0, step_size=settings["step_size"], steps=settings["steps"]).x
        assert measure(x) == pytest.approx(expected, rel=1e-4)


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_from_tune_settings_reach_every_inversion_row(smoke):
    tmp, _ = smoke
    tuned = tmp / "tuned.yaml"  # distinctive settings, so rows that ignored them cannot match by chance
    tuned.write_text(yaml.safe_dump({"objective": "inversion", "step_size": 0.0371, "steps": 7}))
    used = run_module("jobs.fanout", "--config", SMOKE, *store_overrides(tmp), "--from-tune", str(tuned))
    assert used.returncode == 0, used.stderr[-3000:]
    results = pd.read_parquet(tmp / "store" / "results")
    new = results[results["run_id"] == results.sort_values("created_at")["run_id"].iloc[-1]]
    assert set(new["kind"]) == {"invert", "invert_sweep", "pairs", "interpolate"}  # the tunable kinds
    assert (abs(new["step_size"] - 0.0371) < 1e-6).all() and (new["steps"] == 7).all()
    assert len(new) == 24 + 4 + 4 + 2 + 6  # invert, its glyphs targets, invert_sweep, pairs, interpolate


def test_unknown_config_key_exits_nonzero_with_message(tmp_path):
    proc = run_module("jobs.main", "--config", SMOKE, "--set", "fanout.stepz=3", *store_overrides(tmp_path))
    assert proc.returncode == 2
    assert "unknown config key 'fanout.stepz'" in proc.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.ffcv
def test_missing_dataset_exits_nonzero_with_message(tmp_path):
    proc = run_module("jobs.train", "--config", SMOKE, *store_overrides(tmp_path))
    assert proc.returncode == 2
    assert "DataError" in proc.stderr and "train.beton" in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.ray
@pytest.mark.ffcv
@pytest.mark.slow
def test_fanout_with_untrained_model_exits_nonzero(trained_pair, tmp_path):
    shutil.copytree(trained_pair[0] / "data", tmp_path / "data")  # the data, but an empty store
    proc = run_module("jobs.fanout", "--config", SMOKE, *store_overrides(tmp_path))
    assert proc.returncode == 2
    assert "'digits_standard' is not in the store's models table" in proc.stderr


@pytest.mark.ray
@pytest.mark.ffcv
def test_every_result_image_is_judged_by_the_other_model(trained_pair):
    """fanout.judge's default with two models: each model's result images are labelled by the other one; judge_pred
    is that model's label of the stored 8-bit image, and the summary gives "judged as target" per model and kind."""
    import torch

    from robrep.checkpoint import load_checkpoint
    from robrep.images import decode_png
    from robrep.report import judged_table, summary_table
    from robrep.store import load_results, read_table

    tmp, proc = trained_pair
    results = load_results(tmp / "store", images=True)
    other = {"digits_standard": "digits_robust", "digits_robust": "digits_standard"}
    assert (results["judge_model_id"] == results["model_id"].map(other)).all()
    models = read_table(tmp / "store", "models").set_index("model_id")
    for judge_id, rows in results.groupby("judge_model_id"):
        judge, _ = load_checkpoint(models.loc[judge_id, "checkpoint"])
        images = torch.stack([torch.from_numpy(decode_png(b).copy()).permute(2, 0, 1) for b in rows["image_png"]]) / 255
        images = images[:, :1]  # digits are grey: the models take one channel
        with torch.no_grad():
            assert judge(images).argmax(1).tolist() == rows["judge_pred"].tolist()
    assert (results["judge_pred"] != results["pred_class"]).any(), "the judge is another classifier"
    summary = summary_table(read_table(tmp / "store", "models"), results).set_index("model_id")
    inverted = results[(results["kind"] == "invert") & (results["init"] == "image")]
    for model_id, rows in inverted.groupby("model_id"):
        expected = (rows["judge_pred"] == rows["target_class"]).mean()
        assert summary.loc[model_id, "other_class_judged_target"] == pytest.approx(expected)
    judged = judged_table(results)
    assert set(judged["kind"]) >= {"invert", "pairs", "interpolate"} and judged["judged_as_target"].between(0, 1).all()
    assert "other_class_judged_target" in proc.stdout and "judged_as_target" in proc.stdout
