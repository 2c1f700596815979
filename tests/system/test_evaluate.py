"""jobs.evaluate on an imported robustness-library checkpoint, through a real local Ray."""

import pandas as pd
import pytest
import torch
from helpers import CIFAR_MEAN, CIFAR_STD, SMOKE, robustness_layout, run_module

from datasets import sources
from datasets.beton import write_beton

pytestmark = [pytest.mark.ray, pytest.mark.ffcv]


def test_evaluate_imports_and_writes_table_4(tmp_path):
    from robustness.cifar_models.resnet import ResNet18

    torch.manual_seed(0)
    torch.save(robustness_layout(ResNet18(num_classes=10).state_dict(), CIFAR_MEAN, CIFAR_STD), tmp_path / "r.pt")
    write_beton(tmp_path / "test.beton", sources.synthetic(num_classes=10, per_class=2, resolution=32))
    proc = run_module("jobs.evaluate", "--robustness-checkpoint", str(tmp_path / "r.pt"), "--arch", "cifar_resnet18",
                      "--model-id", "imported_rn18", "--data", str(tmp_path / "test.beton"), "--store",
                      str(tmp_path / "store"), "--eps", "0.5", "--steps", "2", "--step-size", "0.25",
                      "--apgd-steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Standard" in proc.stdout and "imported_rn18" in proc.stdout and "PGD-2" in proc.stdout
    assert "APGD-CE" in proc.stdout and "APGD-3" in proc.stdout
    evaluations = pd.read_parquet(tmp_path / "store" / "evaluations")
    row = evaluations.iloc[0]
    assert evaluations["n"].tolist() == [20] and row["adv_acc"] <= row["clean_acc"]
    assert row["adv_acc"] <= min(row["pgd_acc"], row["apgd_ce_acc"], row["apgd_dlr_acc"]) and row["apgd_steps"] == 3
    models = pd.read_parquet(tmp_path / "store" / "models")
    assert models["model_id"].tolist() == ["imported_rn18"]

    wrong = run_module("jobs.evaluate", "--robustness-checkpoint", str(tmp_path / "r.pt"), "--arch", "resnet18",
                       "--model-id", "x", "--data", str(tmp_path / "test.beton"), "--store", str(tmp_path / "s2"))
    assert wrong.returncode == 2 and "CheckpointError" in wrong.stderr and "missing" in wrong.stderr


def test_evaluate_imports_a_plain_timm_state_dict_with_its_normalisation(tmp_path):
    """Any timm (or torchvision) classifier: its own state dict, the normalisation stated, evaluated through Ray
    (our PGD and APGD on the wrapped model) and recorded as a model the fan-out can use by model_id."""
    import timm

    from robrep.checkpoint import load_checkpoint

    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), tmp_path / "rn18.pth")
    write_beton(tmp_path / "test.beton", sources.synthetic(num_classes=10, per_class=2, resolution=32))
    common = ["--state-dict", str(tmp_path / "rn18.pth"), "--arch", "timm.resnet18", "--model-id", "timm_rn18",
              "--data", str(tmp_path / "test.beton"), "--store", str(tmp_path / "store")]
    unstated = run_module("jobs.evaluate", *common)
    assert unstated.returncode == 2 and "needs the normalisation it was trained with" in unstated.stderr
    proc = run_module("jobs.evaluate", *common, "--set", f"evaluate.mean={CIFAR_MEAN}", "--set",
                      f"evaluate.std={CIFAR_STD}", "--eps", "0.5", "--steps", "2", "--step-size", "0.25",
                      "--apgd-steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "timm_rn18" in proc.stdout and "APGD-2" in proc.stdout
    models = pd.read_parquet(tmp_path / "store" / "models")
    assert models[["model_id", "arch"]].values.tolist() == [["timm_rn18", "timm.resnet18"]]
    model, meta = load_checkpoint(models["checkpoint"].iloc[0])
    assert meta["source"] == "timm" and meta["mean"] == pytest.approx(CIFAR_MEAN)
    assert model.representation(torch.rand(1, 3, 32, 32)).shape == (1, 512)


def test_apgd_finds_no_more_than_our_pgd_on_the_trained_robust_model(trained_pair):
    """AutoAttack's APGD-CE and APGD-DLR (torchattacks, an independent implementation) at the same eps against our
    PGD-20 on the trained digits robust model, on every test image: APGD's accuracy is at most ours + 0.02, and
    ours at most APGD-CE's (the same loss, 5x the steps and an adaptive step) + 0.08: a bug that weakened our
    attack would show here. (Measured on the smoke pair, the same on every run: PGD-20 39.8%, APGD-CE 34.8%; on the
    pair before it, 22.6% / 20.1%. DLR is another loss, hence "robust" is the per-example minimum over all.)"""
    from datasets.beton import read_all
    from jobs.config import load_config
    from robrep.checkpoint import load_checkpoint
    from robrep.train import evaluate_independently

    tmp, _ = trained_pair
    models = pd.read_parquet(tmp / "store" / "models").set_index("model_id")
    model, _ = load_checkpoint(models.loc["digits_robust", "checkpoint"])
    x, y = read_all(tmp / "data" / "test.beton")
    attack = load_config(SMOKE).train[1].eval_attack  # the smoke config's, as the models table's PGD-20 used
    scores = evaluate_independently(model, [(x[i:i + 120], y[i:i + 120]) for i in range(0, len(y), 120)], attack, 100)
    print(scores)
    assert 0.1 < scores["pgd_acc"] < scores["clean_acc"], "a robust model that an attack can still move"
    assert scores["apgd_ce_acc"] <= scores["pgd_acc"] + 0.02 and scores["apgd_dlr_acc"] <= scores["pgd_acc"] + 0.02
    assert scores["pgd_acc"] <= scores["apgd_ce_acc"] + 0.08
    assert scores["adv_acc"] <= min(scores["pgd_acc"], scores["apgd_ce_acc"], scores["apgd_dlr_acc"])
    assert abs(scores["pgd_acc"] - models.loc["digits_robust", "adv_acc"]) < 0.02, "the models table's PGD-20 number"


def test_evaluate_imports_a_robustbench_model_by_name(tmp_path):
    """A RobustBench model by name, from the file where RobustBench keeps it (synthesised with its own class), never
    downloaded: evaluated through Ray and recorded as a model the fan-out can use by model_id."""
    from robrep.models import robustbench

    torch.manual_seed(0)
    published = tmp_path / "rb" / "cifar10" / "L2" / "Rice2020Overfitting.pt"
    write_beton(tmp_path / "test.beton", sources.synthetic(num_classes=10, per_class=2, resolution=32))
    common = ["--robustbench", "Rice2020Overfitting", "--dataset", "cifar10", "--threat-model", "L2",
              "--robustbench-dir", str(tmp_path / "rb"), "--data", str(tmp_path / "test.beton"),
              "--store", str(tmp_path / "store")]
    absent = run_module("jobs.evaluate", *common)
    assert absent.returncode == 2 and f"put it at {published}" in absent.stderr, absent.stderr[-2000:]
    assert not (tmp_path / "store").exists()
    published.parent.mkdir(parents=True)
    state = robustbench.entry("cifar10", "L2", "Rice2020Overfitting")["model"]().state_dict()
    torch.save({k: v for k, v in state.items() if k not in ("mu", "sigma")}, published)
    proc = run_module("jobs.evaluate", *common, "--eps", "0.5", "--steps", "2", "--step-size", "0.25",
                      "--apgd-steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Rice2020Overfitting" in proc.stdout and "APGD-2" in proc.stdout
    models = pd.read_parquet(tmp_path / "store" / "models")
    assert models[["model_id", "arch"]].values.tolist() == [
        ["Rice2020Overfitting", "robustbench.cifar10.L2.Rice2020Overfitting"]]
