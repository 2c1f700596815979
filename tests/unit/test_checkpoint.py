"""robrep's checkpoint format round-trips and refuses what does not match."""

import json
import sys

import pytest
import torch
from helpers import CIFAR_MEAN, CIFAR_STD, robustness_layout

from robrep.checkpoint import load_checkpoint, save_checkpoint
from robrep.core.errors import CheckpointError
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


def match_digest(folder) -> None:
    from robrep.core.location import file_digest

    meta = json.loads((folder / "meta.json").read_text())
    meta["digest"] = file_digest(folder / "model.pt")
    (folder / "meta.json").write_text(json.dumps(meta))


def test_a_changed_weights_file_is_refused(tmp_path):
    model = create_model("small_cnn", 10, META["mean"], META["std"], width=8)
    save_checkpoint(tmp_path / "m", model, META)
    other = create_model("small_cnn", 10, META["mean"], META["std"], width=8)
    torch.save(other.state_dict(), tmp_path / "m" / "model.pt")
    with pytest.raises(CheckpointError, match="digest mismatch"):
        load_checkpoint(tmp_path / "m")


def test_a_module_object_is_not_a_state_dict(tmp_path):
    model = create_model("small_cnn", 10, META["mean"], META["std"], width=8)
    save_checkpoint(tmp_path / "m", model, META)
    torch.save({"evil": torch.nn.ReLU()}, tmp_path / "m" / "model.pt")
    match_digest(tmp_path / "m")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "m")


# --- import of MadryLab robustness-library checkpoints ---------------------------------------------------

from robrep.checkpoint import import_robustness_checkpoint  # noqa: E402


def library_models():
    """The robustness library's own model modules. Its imagenet_models import `torchvision.models.utils`, which
    torchvision has since removed; it only used `load_state_dict_from_url` from it (for `pretrained=True`,
    never called here), so that one name is provided from torch.hub where it now lives."""
    import types

    if "torchvision.models.utils" not in sys.modules:
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = shim
    from robustness import cifar_models, imagenet_models

    return imagenet_models, cifar_models


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# robrep arch -> (the library's module and constructor, image size, normalisation): every architecture of the
# library's published robust models (ImageNet L2/Linf, CIFAR L2/Linf).
LIBRARY_ARCHS = {
    "resnet18": ("imagenet", "resnet18", 64, IMAGENET_MEAN, IMAGENET_STD),
    "resnet50": ("imagenet", "resnet50", 64, IMAGENET_MEAN, IMAGENET_STD),
    "wide_resnet50_2": ("imagenet", "wide_resnet50_2", 64, IMAGENET_MEAN, IMAGENET_STD),
    "wide_resnet50_4": ("imagenet", "wide_resnet50_4", 64, IMAGENET_MEAN, IMAGENET_STD),
    "vgg16_bn": ("imagenet", "vgg16_bn", 64, IMAGENET_MEAN, IMAGENET_STD),
    "cifar_resnet18": ("cifar", "ResNet18", 32, CIFAR_MEAN, CIFAR_STD),
    "cifar_resnet50": ("cifar", "ResNet50", 32, CIFAR_MEAN, CIFAR_STD),
    "resnet34": ("imagenet", "resnet34", 64, IMAGENET_MEAN, IMAGENET_STD),
    "cifar_resnet34": ("cifar", "ResNet34", 32, CIFAR_MEAN, CIFAR_STD),
}
# The library's larger ResNets (the same block code as above, more or wider blocks): their layout -- every key
# and shape -- is checked against ours on the meta device, without the gigabytes their weights would take.
LIBRARY_LAYOUTS = {
    **{f"resnet{d}": ("imagenet", f"resnet{d}") for d in (18, 34, 50, 101, 152)},
    **{f"wide_resnet50_{k}": ("imagenet", f"wide_resnet50_{k}") for k in range(2, 7)},
    "wide_resnet101_2": ("imagenet", "wide_resnet101_2"),
    **{f"cifar_resnet{d}": ("cifar", f"ResNet{d}") for d in (18, 34, 50, 101, 152)},
    "cifar_resnet18_wide": ("cifar", "ResNet18Wide"),
}


def test_every_library_resnet_has_our_layout():
    from robrep.models import ARCHS

    imagenet_models, cifar_models = library_models()
    assert {a for a in ARCHS if "resnet" in a} == set(LIBRARY_LAYOUTS)
    for arch, (family, name) in LIBRARY_LAYOUTS.items():
        with torch.device("meta"):
            theirs = getattr(imagenet_models if family == "imagenet" else cifar_models, name)(num_classes=9)
            ours = create_model(arch, 9, IMAGENET_MEAN, IMAGENET_STD)
        expected = {k: v.shape for k, v in theirs.state_dict().items()}
        got = {k: v.shape for k, v in ours.state_dict().items() if not k.startswith("normalize.")}
        assert got == expected, arch


@pytest.mark.parametrize("arch", sorted(LIBRARY_ARCHS))
def test_import_reproduces_the_library_forward_pass(tmp_path, arch):
    """A checkpoint of the library's own model class, with random weights and batch-norm statistics, saved in its
    layout, imports as `arch` with the same logits and R(x) (within 1e-5), and the same input gradient through
    the fake ReLU (the library's `fake_relu=True`)."""
    family, name, size, mean, std = LIBRARY_ARCHS[arch]
    imagenet_models, cifar_models = library_models()
    torch.manual_seed(0)
    reference = getattr(imagenet_models if family == "imagenet" else cifar_models, name)(num_classes=9)
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # not the identity: folding and key order would show
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
            module.weight.data.uniform_(0.8, 1.2)
            module.bias.data.uniform_(-0.1, 0.1)
    reference.eval()
    torch.save(robustness_layout(reference.state_dict(), mean, std), tmp_path / "r.pt")
    model, meta = import_robustness_checkpoint(tmp_path / "r.pt", arch, 9)
    x = torch.rand(2, 3, size, size, requires_grad=True)
    normalized = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    logits, latent = reference(normalized, with_latent=True, fake_relu=True)
    ours = model.representation(x, fake_relu=True)
    torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, latent, atol=1e-5, rtol=1e-5)
    coordinate = int(latent[0].argmin())  # a dead unit where there is one: the fake ReLU's gradient flows there
    expected = torch.autograd.grad(latent[0, coordinate], x)[0]
    torch.testing.assert_close(torch.autograd.grad(ours[0, coordinate], x)[0], expected, atol=1e-5, rtol=1e-4)
    assert meta["arch"] == arch and meta["mean"] == pytest.approx(mean)


def test_import_mismatches_say_what_differs(tmp_path):
    from robustness.cifar_models.resnet import ResNet18

    state = ResNet18(num_classes=10).state_dict()
    torch.save(robustness_layout(state, CIFAR_MEAN, CIFAR_STD), tmp_path / "cifar.pt")
    with pytest.raises(CheckpointError, match="mis-shaped .*linear.weight"):
        import_robustness_checkpoint(tmp_path / "cifar.pt", "cifar_resnet18", 100)  # wrong class count
    with pytest.raises(CheckpointError, match="missing"):
        import_robustness_checkpoint(tmp_path / "cifar.pt", "resnet18", 10)  # wrong architecture
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not in the robustness layout"):
        import_robustness_checkpoint(tmp_path / "plain.pt", "cifar_resnet18", 10)
    with pytest.raises(CheckpointError, match="no robustness checkpoint"):
        import_robustness_checkpoint(tmp_path / "absent.pt", "cifar_resnet18", 10)
