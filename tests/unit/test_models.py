"""Every registered model: representation width, logits, and the fake ReLU's gradient."""

import pytest
import torch

from robrep.core.errors import ConfigError
from robrep.models import create_model, list_models

WIDTHS = {"small_cnn": 128, "cifar_resnet18": 512, "cifar_resnet34": 512, "cifar_resnet50": 2048,
          "cifar_resnet101": 2048, "cifar_resnet152": 2048, "cifar_resnet18_wide": 2560, "resnet18": 512,
          "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048, "wide_resnet101_2": 2048,
          **{f"wide_resnet50_{k}": 2048 for k in range(2, 7)}, "vgg16": 4096, "vgg16_bn": 4096}
# The registered architectures that differ only in depth or width from one below (the same class and block code):
# their layout is checked against the library's in test_checkpoint.py, their forward here on the meta device; the
# numeric tests run on the others (the largest, wide_resnet50_6, would take 4 GB in float64).
LARGER = {"cifar_resnet101", "cifar_resnet152", "cifar_resnet18_wide", "resnet101", "resnet152", "wide_resnet101_2",
          "wide_resnet50_3", "wide_resnet50_5", "wide_resnet50_6"}
NUMERIC = sorted(set(list_models()) - LARGER)


def test_registry_covers_the_documented_models():
    assert set(list_models()) == set(WIDTHS)


@pytest.mark.parametrize("name", list_models())
def test_representation_width_and_logits(name):
    torch.manual_seed(0)
    device = "meta" if name in LARGER else "cpu"
    with torch.device(device):
        model = create_model(name, 7, [0.4] * 3, [0.2] * 3).eval()
        x = torch.rand(2, 3, 32, 32)
    assert model.representation(x).shape == (2, WIDTHS[name]) == (2, model.representation_dim)
    assert model(x).shape == (2, 7)
    assert "normalize.mean" in model.state_dict()
    if device == "cpu":
        assert torch.equal(model.normalize.mean.flatten(), torch.tensor([0.4] * 3))


@pytest.mark.parametrize("name", NUMERIC)
def test_fake_relu_passes_gradient_where_the_relu_is_dead(name):
    torch.manual_seed(0)
    model = create_model(name, 7, [0.4] * 3, [0.2] * 3).eval()
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    for size in (4, 8, 32):  # small inputs leave a 1x1 last map, where whole coordinates die
        x = torch.rand(4, 3, size, size, requires_grad=True)
        try:
            rep = model.representation(x)
        except RuntimeError:
            continue
        dead = (rep == 0).nonzero()
        if len(dead):
            break
    assert len(dead), f"{name}: found no dead coordinate to test with"
    row, col = dead[0].tolist()
    plain = torch.autograd.grad(model.representation(x)[row, col], x)[0]
    fake = torch.autograd.grad(model.representation(x, fake_relu=True)[row, col], x)[0]
    assert plain.abs().sum() == 0
    assert fake[row].abs().sum() > 0
    torch.testing.assert_close(model.representation(x, fake_relu=True), model.representation(x))  # same forward


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known models: .*resnet50"):
        create_model("resnet9000", 10, [0.5] * 3, [0.2] * 3)


def test_small_cnn_checkpoints_from_before_depth_still_load():
    """A small_cnn saved when its stages were block1..block3 (the default width 32, depth 3) loads as `stages`."""
    model = create_model("small_cnn", 10, [0.5] * 3, [0.2] * 3)
    old = {k.replace("stages.0.", "block1.").replace("stages.1.", "block2.").replace("stages.2.", "block3."): v
           for k, v in model.state_dict().items()}
    assert any(k.startswith("block1.") for k in old)
    again = create_model("small_cnn", 10, [0.5] * 3, [0.2] * 3)
    again.load_state_dict(old)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(again.eval()(x), model.eval()(x))
