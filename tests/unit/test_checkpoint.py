"""robrep's checkpoint format round-trips and refuses what does not match."""

import json

import pytest
import torch
from helpers import CIFAR_MEAN, CIFAR_STD, robustness_layout

from robrep.checkpoint import load_checkpoint, save_checkpoint
from robrep.core.errors import CheckpointError
from robrep.fast import fold_batchnorm
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
    """The robustness library's own model modules, as robrep's robustness.* family imports them (its
    imagenet_models need the one name of the removed `torchvision.models.utils` that robrep provides)."""
    from robrep.models.robustness import _module

    return _module("imagenet"), _module("cifar")


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


# The library's other architectures, as robustness.<module>.<constructor> (its own classes, robrep/models/
# robustness.py): (module, constructor, image size, whether the library's own forward takes fake_relu=True).
LIBRARY_CLASSES = [("cifar", "DenseNet121", 32, True), ("cifar", "VGG11", 32, False),
                   ("cifar", "inceptionv3", 32, False), ("imagenet", "leaky_resnet18", 64, False),
                   ("imagenet", "densenet121", 64, True)]


@pytest.mark.parametrize("family,name,size,library_fake_relu", LIBRARY_CLASSES, ids=[c[1] for c in LIBRARY_CLASSES])
def test_the_librarys_other_architectures_import_as_its_own_classes(tmp_path, family, name, size, library_fake_relu):
    """A checkpoint of the library's CIFAR DenseNet / VGG / Inception or ImageNet leaky ResNet / DenseNet, saved in
    its layout, imports as robustness.<module>.<name>: the library's logits and latent (`with_latent`) within
    1e-5, and, where the library's forward takes fake_relu, its input gradient through the fake ReLU."""
    imagenet_models, cifar_models = library_models()
    torch.manual_seed(0)
    # 10 classes: the library's inceptionv3 builds 10 whatever it is asked
    reference = getattr(cifar_models if family == "cifar" else imagenet_models, name)(num_classes=10)
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
    reference.eval()
    mean, std = (CIFAR_MEAN, CIFAR_STD) if family == "cifar" else (IMAGENET_MEAN, IMAGENET_STD)
    torch.save(robustness_layout(reference.state_dict(), mean, std), tmp_path / "r.pt")
    model, meta = import_robustness_checkpoint(tmp_path / "r.pt", f"robustness.{family}.{name}", 10)
    x = torch.rand(2, 3, size, size, requires_grad=True)
    normalized = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    logits, latent = reference(normalized, with_latent=True, fake_relu=library_fake_relu)
    torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.representation(x, fake_relu=library_fake_relu), latent.flatten(1), atol=1e-5,
                               rtol=1e-5)
    if library_fake_relu:
        coordinate = int(latent.flatten(1)[0].argmin())
        expected = torch.autograd.grad(latent.flatten(1)[0, coordinate], x)[0]
        ours = model.representation(x, fake_relu=True)[0, coordinate]
        torch.testing.assert_close(torch.autograd.grad(ours, x)[0], expected, atol=1e-5, rtol=1e-4)
    assert meta["arch"] == f"robustness.{family}.{name}"
    model, x = model.double(), x.detach().double()  # FastModel's batch-norm folding is exact on it, in float64
    folded = fold_batchnorm(model)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(folded.representation(x), model.representation(x), rtol=1e-9, atol=1e-9)


def test_every_constructor_of_the_library_builds_or_is_refused_with_a_reason():
    """Every classifier constructor of cifar_models and imagenet_models, on the meta device: a model with R(x)
    found (and the fake ReLU where R follows a ReLU), or one ConfigError (SqueezeNet's convolution head, the
    library's own broken ResNet18Thin)."""
    from robrep.core.errors import ConfigError
    from robrep.models import fake_relu_problem, robustness

    built, refused, no_fake = set(), set(), set()
    for family in ("cifar", "imagenet"):
        for name in robustness.constructors(family):
            try:
                with torch.device("meta"):
                    model = create_model(f"robustness.{family}.{name}", 10, CIFAR_MEAN, CIFAR_STD)
                    if fake_relu_problem(model):
                        no_fake.add(name)
                built.add((family, name))
            except ConfigError:
                refused.add(name)
    assert refused == {"ResNet18Thin", "squeezenet1_0", "squeezenet1_1"}
    # R after a leaky ReLU (the library's fake_relu there swaps in a plain ReLU's forward), or after concatenating
    # several branches' ReLUs (Inception)
    assert no_fake == {"inceptionv3", *(f"leaky_resnet{d}" for d in (18, 34, 50, 101, 152))}
    assert len(built) == 60  # measured: 30 in cifar_models (with lower-case aliases), 30 in imagenet_models
