"""jobs.evaluate on an imported robustness-library checkpoint, through a real local Ray."""

import pandas as pd
import pytest
import torch
from conftest import run_module
from test_checkpoint import CIFAR_MEAN, CIFAR_STD, robustness_layout

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
                      str(tmp_path / "store"), "--eps", "0.5", "--steps", "2", "--step-size", "0.25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Standard" in proc.stdout and "imported_rn18" in proc.stdout and "PGD-2" in proc.stdout
    evaluations = pd.read_parquet(tmp_path / "store" / "evaluations")
    assert evaluations["n"].tolist() == [20] and evaluations["adv_acc"].iloc[0] <= evaluations["clean_acc"].iloc[0]
    models = pd.read_parquet(tmp_path / "store" / "models")
    assert models["model_id"].tolist() == ["imported_rn18"]

    wrong = run_module("jobs.evaluate", "--robustness-checkpoint", str(tmp_path / "r.pt"), "--arch", "resnet18",
                       "--model-id", "x", "--data", str(tmp_path / "test.beton"), "--store", str(tmp_path / "s2"))
    assert wrong.returncode == 2 and "CheckpointError" in wrong.stderr and "missing" in wrong.stderr
