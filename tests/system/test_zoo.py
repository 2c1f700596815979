"""The zoo preset's CPU smoke twin (jobs/configs/robust_zoo_smoke.yaml) from end to end: every published format and
family (robustness-library checkpoints of a hand-written and a library class, torchvision and timm state dicts, a
GELU timm model, a RobustBench model by name) imported, evaluated, inverted and visualized in one store, the report
drawn, a rerun resuming."""

import pandas as pd
import pytest
from helpers import REPO, run_module, zoo_checkpoints

pytestmark = [pytest.mark.ray, pytest.mark.ffcv, pytest.mark.slow]

ZOO = {"madry_cifar_rn18": "cifar_resnet18", "madry_densenet": "robustness.cifar.densenet_cifar",
       "tv_rn18": "torchvision.resnet18", "timm_rn18": "timm.resnet18",
       "timm_convnext_atto": "timm.convnext_atto", "Rice2020Overfitting": "robustbench.cifar10.L2.Rice2020Overfitting"}


def test_the_zoo_smoke_twin_imports_evaluates_and_fans_out_over_every_format(tmp_path):
    zoo_checkpoints(tmp_path / "published")
    config = tmp_path / "zoo.yaml"  # the shipped preset, rooted in tmp_path
    config.write_text((REPO / "jobs/configs/robust_zoo_smoke.yaml").read_text().replace("runs/robust_zoo_smoke",
                                                                                       str(tmp_path)))
    proc = run_module("jobs.main", "--config", str(config))
    assert proc.returncode == 0, proc.stderr[-4000:]
    store = tmp_path / "store"
    models = pd.read_parquet(store / "models")
    assert dict(zip(models["model_id"], models["arch"], strict=True)) == ZOO
    evaluations = pd.read_parquet(store / "evaluations")
    assert sorted(evaluations["model_id"]) == sorted(ZOO) and (evaluations["n"] == 20).all()
    assert (evaluations["adv_acc"] <= evaluations["clean_acc"]).all()
    results = pd.read_parquet(store / "results", columns=["kind", "model_id", "rep_dist_rel"])
    counts = results.groupby(["kind", "model_id"]).size().to_dict()
    assert counts == {**{("invert", m): 4 for m in ZOO},  # 2 images x (noise, image)
                      **{("visualize", m): 2 for m in ZOO if m != "timm_convnext_atto"}}  # 2 coordinates
    assert results[results["kind"] == "invert"]["rep_dist_rel"].notna().all()
    report = tmp_path / "report"
    assert {p.name for p in report.glob("*.png")} == {
        "inversion_noise.png", "inversion_image.png",
        *(f"fig7_visualize_{m}.png" for m in ZOO if m != "timm_convnext_atto")}
    assert all(m in proc.stdout.split("== summary")[1] for m in ZOO)  # one summary row per model, with its numbers

    again = run_module("jobs.main", "--config", str(config))  # resumes: nothing imported, evaluated or run twice
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.count("in the store already") == 6 and again.stdout.count("evaluated already") == 6
    assert "34 already in the store, 0 to run" in again.stdout
    assert len(pd.read_parquet(store / "evaluations")) == 6 and len(pd.read_parquet(store / "models")) == 6

    clash = tmp_path / "clash.yaml"  # a model_id the store has from another file
    clash.write_text(config.read_text().replace("published/torchvision_resnet18.pt", "published/timm_resnet18.pt"))
    refused = run_module("jobs.main", "--config", str(clash))
    assert refused.returncode == 2 and "model_id 'tv_rn18' is in the store already" in refused.stderr
