"""robrep's checkpoint format round-trips and refuses what does not match."""

import json
import sys

import pytest
import torch

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


class Payload:
    """Unpickling this runs `touch <marker>`: the marker shows whether a loader ran pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD makes torch.load run pickles unless the caller passes weights_only=True
# itself, so these tests fail on a copy of the loaders without the flag (torch's own default would hide it).
LOAD_IN_A_CHILD = """
import sys
from robrep.checkpoint import {fn}
from robrep.core.errors import CheckpointError
try:
    {fn}(*sys.argv[1:2], *(["small_cnn", 10] if "{fn}" == "import_robustness_checkpoint" else []))
except CheckpointError as e:
    print("refused:", e)
"""


def load_in_a_child(fn: str, path) -> str:
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    proc = subprocess.run([sys.executable, "-c", LOAD_IN_A_CHILD.format(fn=fn), str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


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


def test_pickled_code_in_a_checkpoint_never_runs(tmp_path):
    model = create_model("small_cnn", 10, META["mean"], META["std"], width=8)
    save_checkpoint(tmp_path / "m", model, META)
    marker = tmp_path / "pwned"
    torch.save({"weight": Payload(marker)}, tmp_path / "m" / "model.pt")
    match_digest(tmp_path / "m")  # whoever can write model.pt can write meta.json: weights_only is the guard
    out = load_in_a_child("load_checkpoint", tmp_path / "m")
    assert "refused: cannot read" in out and not marker.exists()


def test_pickled_code_in_a_robustness_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {"module.model.x": Payload(marker)}, "epoch": 1}, tmp_path / "r.pt")
    out = load_in_a_child("import_robustness_checkpoint", tmp_path / "r.pt")
    assert "refused: cannot read" in out and "weights_only=True" in out and not marker.exists()


def test_a_module_object_is_not_a_state_dict(tmp_path):
    model = create_model("small_cnn", 10, META["mean"], META["std"], width=8)
    save_checkpoint(tmp_path / "m", model, META)
    torch.save({"evil": torch.nn.ReLU()}, tmp_path / "m" / "model.pt")
    match_digest(tmp_path / "m")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "m")


# --- import of MadryLab robustness-library checkpoints ---------------------------------------------------

from robrep.checkpoint import import_robustness_checkpoint  # noqa: E402


def robustness_layout(state: dict, mean, std) -> dict:
    """A checkpoint as robustness.train saves it: the model twice, plus the normalizer's (3,1,1) buffers."""
    model = {f"module.model.{k}": v for k, v in state.items()}
    model.update({f"module.attacker.model.{k}": v for k, v in state.items()})
    for prefix in ("module.normalizer.", "module.attacker.normalize."):
        model[prefix + "new_mean"] = torch.tensor(mean).view(3, 1, 1)
        model[prefix + "new_std"] = torch.tensor(std).view(3, 1, 1)
    return {"model": model, "epoch": 150, "optimizer": {"state": {}, "param_groups": []}}


CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]


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
}


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
