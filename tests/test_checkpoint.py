"""robrep's checkpoint format round-trips and refuses what does not match."""

import json

import pytest
import torch

from robrep.checkpoint import load_checkpoint, save_checkpoint
from robrep.errors import CheckpointError
from robrep.models import create_model

META = {"arch": "small_cnn", "arch_kwargs": {"width": 8}, "num_classes": 10, "mean": [0.1] * 3, "std": [0.2] * 3}


def test_round_trip_gives_identical_outputs(tmp_path):
    model = create_model("small_cnn", 10, META["mean"], META["std"], width=8).eval()
    save_checkpoint(tmp_path / "m", model, META)
    loaded, meta = load_checkpoint(tmp_path / "m")
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))
    assert meta["arch"] == "small_cnn"
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent")


def test_wrong_width_is_a_checkpoint_error(tmp_path):
    model = create_model("small_cnn", 10, META["mean"], META["std"], width=8)
    save_checkpoint(tmp_path / "m", model, META)
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    meta["arch_kwargs"] = {"width": 16}
    (tmp_path / "m" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "m")


def test_pickled_code_is_refused(tmp_path):
    model = create_model("small_cnn", 10, META["mean"], META["std"], width=8)
    save_checkpoint(tmp_path / "m", model, META)
    torch.save({"evil": torch.nn.ReLU()}, tmp_path / "m" / "model.pt")  # a module object, not a state dict
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "m")
