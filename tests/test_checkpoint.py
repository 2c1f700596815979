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
from robrep.errors import CheckpointError
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
    from robrep.location import file_digest

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


def test_import_of_a_real_robustness_cifar_resnet18(tmp_path):
    """The reference library's own model class, saved in its layout, gives the same logits and R(x)."""
    from robustness.cifar_models.resnet import ResNet18

    torch.manual_seed(0)
    reference = ResNet18(num_classes=10).eval()
    torch.save(robustness_layout(reference.state_dict(), CIFAR_MEAN, CIFAR_STD), tmp_path / "cifar.pt")
    model, meta = import_robustness_checkpoint(tmp_path / "cifar.pt", "cifar_resnet18", 10)
    x = torch.rand(2, 3, 32, 32)
    normalized = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits, latent = reference(normalized, with_latent=True)
        torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.representation(x), latent, atol=1e-5, rtol=1e-5)
    assert meta["mean"] == pytest.approx(CIFAR_MEAN) and meta["epoch"] == 150


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vgg16"])
def test_import_of_imagenet_layouts(tmp_path, arch):
    """robustness's ImageNet models are torchvision's key for key (its own module no longer imports
    against current torchvision), so the layout is synthesised from a torchvision model."""
    import torchvision

    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(num_classes=9).eval()
    torch.save(robustness_layout(reference.state_dict(), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
               tmp_path / "in.pt")
    model, _ = import_robustness_checkpoint(tmp_path / "in.pt", arch, 9)
    x = torch.rand(1, 3, 64, 64)
    normalized = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(normalized), atol=1e-4, rtol=1e-4)


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
