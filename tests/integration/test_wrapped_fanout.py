"""The fan-out on wrapped library classifiers (a torchvision ResNet-18 and a timm ConvNeXt), from checkpoint folders,
on 32 px RGB data: every job kind runs (inversions, radius sweeps, pairs, interpolations and top-activating images
on both, each judged by the other; visualizations and manipulations, which need the fake ReLU, on the ReLU
network), and a block that asks the fake ReLU of the GELU one is refused at the door, with the reason, before any
job runs."""

import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO, SMOKE, run_module

from datasets import sources
from datasets.beton import write_beton
from robrep.checkpoint import save_checkpoint
from robrep.models import create_model

pytestmark = [pytest.mark.ray, pytest.mark.ffcv]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def checkpoint(folder, arch: str, model_id: str) -> str:
    torch.manual_seed(0)
    model = create_model(arch, 10, MEAN, STD, image_size=32)
    meta = {"arch": arch, "num_classes": 10, "mean": MEAN, "std": STD, "model_id": model_id,
            "arch_kwargs": {"image_size": 32}, "dataset": "synthetic"}
    return save_checkpoint(folder / model_id, model, meta)


def test_every_kind_it_admits_runs_on_wrapped_models(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_beton(data / "test.beton", sources.synthetic(num_classes=10, per_class=2, resolution=32))
    relu = checkpoint(tmp_path / "ckpt", "torchvision.resnet18", "tv_resnet18")
    gelu = checkpoint(tmp_path / "ckpt", "timm.convnext_atto", "timm_convnext")
    config = yaml.safe_load((REPO / SMOKE).read_text())
    config.update(store=str(tmp_path / "store"), storage_path=str(tmp_path / "ckpt"))
    config["data"].update(dir=str(data), source="synthetic", resolution=32)
    config["fanout"] = {
        "models": [relu, gelu], "split": "test", "indices": {"mode": "first", "n": 2}, "batch_size": 4,
        "workers": 2, "max_in_flight": 2,
        "jobs": [{"kind": "invert", "inits": ["noise", "image"], "step_size": 0.5, "steps": 5},
                 {"kind": "visualize", "indices": {"mode": "first", "n": 1}, "inits": ["gray"],
                  "coordinates": {"mode": "top", "n": 1}, "step_size": 0.5, "steps": 3},
                 {"kind": "invert_sweep", "indices": {"mode": "first", "n": 1}, "radii": [0.5, 2.0],
                  "step_size": 0.1, "steps": 3},
                 {"kind": "pairs", "indices": {"mode": "first", "n": 2}, "step_size": 0.1, "steps": 3},
                 {"kind": "interpolate", "indices": {"mode": "first", "n": 1}, "lam_steps": 2, "step_size": 0.1,
                  "steps": 3},
                 {"kind": "top_activating", "coordinates": {"mode": "list", "values": [0, 5]}, "images_per_end": 1},
                 {"kind": "regularized_visualize", "models": [relu], "indices": {"mode": "first", "n": 1},
                  "inits": ["gray"], "coordinates": {"mode": "top", "n": 1}, "jitter": 1, "max_degrees": 10.0,
                  "step_size": 0.1, "steps": 3},
                 {"kind": "manipulate", "models": [relu], "indices": {"mode": "first", "n": 1}, "inits": ["image"],
                  "coordinates": {"mode": "list", "values": [3]}, "step_size": 0.05, "steps": 3}]}
    path = tmp_path / "wrapped.yaml"
    path.write_text(yaml.safe_dump(config))
    refused = run_module("jobs.fanout", "--config", str(path))
    assert refused.returncode == 2 and not (tmp_path / "store" / "results").exists()
    assert f"fanout.jobs visualize: fake_relu does not apply to timm.convnext_atto: its R(x) is not a ReLU's output " \
           f"(no ReLU); leave {gelu} out of this block" in refused.stderr, refused.stderr[-2000:]
    config["fanout"]["jobs"][1]["models"] = [relu]
    path.write_text(yaml.safe_dump(config))
    proc = run_module("jobs.fanout", "--config", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = pd.read_parquet(tmp_path / "store" / "results")
    inverted = results[results["kind"] == "invert"]
    assert sorted(inverted.groupby("model_id").size().items()) == [("timm_convnext", 4), ("tv_resnet18", 4)]
    judged = dict(zip(inverted["model_id"], inverted["judge_model_id"], strict=False))
    assert judged == {"timm_convnext": "tv_resnet18", "tv_resnet18": "timm_convnext"}
    assert (inverted["judge_pred"] >= 0).all() and inverted["rep_dist_rel"].notna().all()
    shown = results[results["kind"] == "visualize"]
    assert set(shown["model_id"]) == {"tv_resnet18"} and len(shown) == 1
    by_kind = results.groupby("kind")["model_id"].agg(lambda ids: sorted(set(ids))).to_dict()
    both, relu_only = ["timm_convnext", "tv_resnet18"], ["tv_resnet18"]
    assert by_kind == {"invert": both, "invert_sweep": both, "pairs": both, "interpolate": both,
                       "top_activating": both, "visualize": relu_only, "regularized_visualize": relu_only,
                       "manipulate": relu_only}
    assert not (tmp_path / "store" / "failures").exists()
