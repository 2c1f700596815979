"""Any torchvision or timm classifier as a robrep model, against the libraries' own code: the logits are the
library's, R(x) is its classifier's input (timm: forward_head(pre_logits=True)), the fake ReLU is the hand-written
ResNet's where it applies and refused where it does not, batch-norm folding is exact, and PGD inverts through it."""

import copy
from collections import OrderedDict

import pytest
import timm
import torch
import torchvision
from torch import nn

from robrep.core.errors import ConfigError
from robrep.fast import FastModel, conv_bn_pairs, fold_batchnorm
from robrep.models import ResNet, create_model

MEAN, STD = [0.4, 0.45, 0.5], [0.25, 0.22, 0.2]
# (arch, image size, does R(x) follow a ReLU): a member of every family, small enough for a CPU.
TORCHVISION = [("resnet18", 64, True), ("resnext50_32x4d", 64, True), ("wide_resnet50_2", 64, True),
               ("densenet121", 64, True), ("vgg11_bn", 64, True), ("mobilenet_v2", 64, False),
               ("mobilenet_v3_small", 64, False), ("shufflenet_v2_x0_5", 64, True), ("mnasnet0_5", 64, True),
               ("efficientnet_b0", 64, False), ("convnext_tiny", 64, False), ("regnet_y_400mf", 64, True),
               ("vit_b_16", 224, False), ("swin_t", 64, False)]
TIMM = [("resnet18", 64, True), ("convnext_atto", 64, False), ("vit_tiny_patch16_224", 224, False),
        ("efficientnet_b0", 64, False), ("densenet121", 64, True), ("mobilenetv3_small_050", 64, False)]
CASES = [(f"torchvision.{a}", s, r) for a, s, r in TORCHVISION] + [(f"timm.{a}", s, r) for a, s, r in TIMM]


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine terms, so folding has something to get wrong."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def library_model(arch: str, state: dict) -> nn.Module:
    """The library's own network, built by the library, with the wrapped model's weights."""
    family, name = arch.split(".", 1)
    net = torchvision.models.get_model(name, weights=None, num_classes=10) if family == "torchvision" else \
        timm.create_model(name, pretrained=False, num_classes=10)
    own = OrderedDict((k[len("net."):], v) for k, v in state.items() if k.startswith("net."))
    own._metadata = net.state_dict()._metadata  # layout versions (MNASNet's), as a library checkpoint has them
    net.load_state_dict(own)
    return net.eval()


@pytest.mark.parametrize("arch, size, relu", CASES, ids=[c[0] for c in CASES])
def test_logits_and_representation_are_the_librarys_and_folding_is_exact(arch, size, relu):
    torch.manual_seed(0)
    model = randomise_batchnorm(create_model(arch, 10, MEAN, STD, image_size=size))
    net = library_model(arch, model.state_dict())
    x = torch.rand(2, 3, size, size)
    normalized = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(normalized), rtol=1e-5, atol=1e-5)
        rep = model.representation(x)
        if arch.startswith("timm."):
            expected = net.forward_head(net.forward_features(normalized), pre_logits=True)
        else:  # the library's network with its classifier taken out returns the classifier's input
            cut = copy.deepcopy(net)
            parent, _, child = model.head_name.rpartition(".")
            setattr(cut.get_submodule(parent) if parent else cut, child, nn.Identity())
            expected = cut(normalized)
        torch.testing.assert_close(rep, torch.flatten(expected, 1), rtol=1e-5, atol=1e-5)
        assert rep.shape == (2, model.representation_dim)
    if relu:
        fake = model.representation(x, fake_relu=True)
        torch.testing.assert_close(fake.detach(), rep)  # the fake ReLU's forward is a ReLU
    else:
        with pytest.raises(ConfigError, match="fake_relu does not apply"):
            model.representation(x, fake_relu=True)

    # Batch-norm folding (FastModel's) is exact, in float64, and leaves batch-norms that precede a convolution.
    model = model.double()
    folded = fold_batchnorm(model)
    x = x.double()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(folded.representation(x), model.representation(x), rtol=1e-9, atol=1e-9)
    left = sum(type(m) is nn.BatchNorm2d for m in folded.modules())
    def with_activation(m):  # timm's BatchNormAct2d carries its activation: never folded into a convolution
        return sum(type(x).__name__ == "BatchNormAct2d" for x in m.modules())
    assert with_activation(folded) == with_activation(model)
    if arch == "torchvision.densenet121":  # each layer's first batch-norm normalises a concatenation, before a conv
        layers = sum("denselayer" in name.rsplit(".", 1)[-1] for name, _ in model.named_modules())
        assert left == layers + 4  # norm1 of every dense layer, of the 3 transitions and the last (norm5) stay
        assert len(conv_bn_pairs(model)) == layers + 1  # conv1 -> norm2 of every layer, and the stem's


def test_the_fake_relu_is_the_hand_written_resnets():
    """torchvision.resnet18's fake ReLU (found generically) gives the hand-written ResNet-18's gradients, which
    differ from the true ReLU's (dead units pass gradient)."""
    torch.manual_seed(0)
    wrapped = randomise_batchnorm(create_model("torchvision.resnet18", 10, MEAN, STD, image_size=64))
    hand = ResNet(18, 10, MEAN, STD).eval()
    hand.load_state_dict({k.replace("net.", "", 1): v for k, v in wrapped.state_dict().items()})
    x = torch.rand(2, 3, 64, 64)
    grads = {}
    for name, model in (("wrapped", wrapped), ("hand", hand)):
        for fake in (False, True):
            probe = x.clone().requires_grad_(True)
            (model.representation(probe, fake_relu=fake) * torch.linspace(-1, 1, 512)).sum().backward()
            grads[name, fake] = probe.grad
    torch.testing.assert_close(grads["wrapped", True], grads["hand", True], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads["wrapped", False], grads["hand", False], rtol=1e-4, atol=1e-6)
    assert (grads["wrapped", True] - grads["wrapped", False]).abs().max() > 1e-4


# measured after/before at this seed: timm 0.1-0.2 at step 1.0; RobustBench's 0.26 at step 0.5 (0.41-0.51 at 1.0)
@pytest.mark.parametrize("arch,step_size", [("timm.resnet18", 1.0),
                                            ("robustbench.cifar10.L2.Rice2020Overfitting", 0.5)])
def test_pgd_inverts_and_visualizes_through_a_wrapped_model_and_fast_model_agrees(arch, step_size):
    """Eq. 4 and Eq. 5 through timm's ResNet-18 and RobustBench's PreAct ResNet-18 at 32 px: the inversion closes
    most of the distance in representation; the visualization raises its coordinate (with the fake ReLU)."""
    from robrep.objectives import inversion, visualization
    from robrep.pgd import pgd

    torch.manual_seed(0)
    kwargs = {"image_size": 32} if arch.startswith("timm.") else {}
    model = randomise_batchnorm(create_model(arch, 10, MEAN, STD, **kwargs))
    for p in model.parameters():
        p.requires_grad_(False)
    target, start = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        target_rep = model.representation(target)
        before = (model.representation(start) - target_rep).norm(dim=1)
    result = pgd(inversion(model, target_rep), start, eps=1000.0, step_size=step_size, steps=40)
    with torch.no_grad():
        after = (model.representation(result.x) - target_rep).norm(dim=1)
    assert (after < 0.5 * before).all(), (before, after)
    coordinate = torch.tensor([3, 7])
    shown = pgd(visualization(model, coordinate), start, eps=1000.0, step_size=1.0, steps=20)
    with torch.no_grad():
        gained = model.representation(shown.x)[[0, 1], coordinate] - model.representation(start)[[0, 1], coordinate]
    assert (gained > 0).all()
    fast = FastModel(model, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(fast.representation(target), target_rep, rtol=1e-4, atol=1e-4)


def test_names_that_are_not_classifiers_are_refused():
    with pytest.raises(ConfigError, match="unknown torchvision model 'resnet_19'"):
        create_model("torchvision.resnet_19", 10, MEAN, STD)
    with pytest.raises(ConfigError, match="unknown timm model"):
        create_model("timm.not_a_model", 10, MEAN, STD)
    with pytest.raises(ConfigError, match="not a Linear"):
        create_model("torchvision.squeezenet1_0", 10, MEAN, STD)  # its classifier is a convolution


@pytest.mark.parametrize("name", ["densenet121", "vgg11_bn", "resnext50_32x4d", "alexnet"])
def test_robustness_checkpoints_of_torchvision_architectures_import_with_the_librarys_outputs(tmp_path, name):
    """The library's own classes (its imagenet_models, which it trained the ImageNet zoo with), saved in its
    layout: imported as torchvision.<name>, the same logits, latent and fake-ReLU input gradient."""
    from helpers import robustness_layout
    from test_checkpoint import library_models

    from robrep.checkpoint import import_robustness_checkpoint

    imagenet_models, _ = library_models()
    torch.manual_seed(0)
    reference = randomise_batchnorm(getattr(imagenet_models, name)(num_classes=9))
    torch.save(robustness_layout(reference.state_dict(), MEAN, STD), tmp_path / "r.pt")
    model, meta = import_robustness_checkpoint(tmp_path / "r.pt", f"torchvision.{name}", 9)
    size = 224 if name == "alexnet" else 64
    x = torch.rand(2, 3, size, size, requires_grad=True)
    normalized = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    logits, latent = reference(normalized, with_latent=True, fake_relu=True)
    ours = model.representation(x, fake_relu=True)
    torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, latent.flatten(1), atol=1e-5, rtol=1e-5)
    coordinate = int(latent.flatten(1)[0].argmin())  # a dead unit where there is one
    expected = torch.autograd.grad(latent.flatten(1)[0, coordinate], x)[0]
    torch.testing.assert_close(torch.autograd.grad(ours[0, coordinate], x)[0], expected, atol=1e-5, rtol=1e-4)
    assert meta["arch"] == f"torchvision.{name}" and meta["source"] == "robustness"


class DummyModel(nn.Module):
    """robustness.model_utils.DummyModel, the wrapper make_and_restore_model(arch=<module>, add_custom_forward=True)
    puts a custom architecture in (a `model` attribute, a forward that drops the library's extra arguments). Its
    module cannot be imported here (it imports dill and cox, which the library's model classes do not need), so
    its two-line shape is repeated; the keys it gives are what matter."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, *args, **kwargs):
        return self.model(x)


@pytest.mark.parametrize("name", ["mnasnet1_0", "mobilenet_v2", "shufflenet_v2_x1_0"])
def test_the_zoos_custom_torchvision_architectures_import_from_their_dummy_model_layout(tmp_path, name):
    """The ImageNet zoo's MNASNet, MobileNet-v2 and ShuffleNet-v2 were trained as custom architectures: their
    checkpoints read module.model.model.<torchvision keys>. Imported as torchvision.<name>: the same logits."""
    from helpers import robustness_layout

    from robrep.checkpoint import import_robustness_checkpoint

    torch.manual_seed(0)
    reference = DummyModel(randomise_batchnorm(torchvision.models.get_model(name, num_classes=9))).eval()
    torch.save(robustness_layout(reference.state_dict(), MEAN, STD), tmp_path / "r.pt")
    model, meta = import_robustness_checkpoint(tmp_path / "r.pt", f"torchvision.{name}", 9)
    x = torch.rand(2, 3, 64, 64)
    normalized = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(normalized), atol=1e-5, rtol=1e-5)
    assert meta["arch"] == f"torchvision.{name}"


def test_plain_state_dicts_import_with_their_stated_normalisation(tmp_path):
    from robrep.checkpoint import import_state_dict, load_checkpoint, save_checkpoint
    from robrep.core.errors import CheckpointError

    torch.manual_seed(0)
    for arch, build, wrap in [
        ("torchvision.resnet18", lambda: torchvision.models.resnet18(num_classes=7), lambda s: {"state_dict": {
            f"module.{k}": v for k, v in s.items()}}),  # DataParallel's prefix, under "state_dict"
        ("timm.convnext_atto", lambda: timm.create_model("convnext_atto", num_classes=7), lambda s: s),
    ]:
        net = randomise_batchnorm(build())
        torch.save(wrap(net.state_dict()), tmp_path / "w.pt")
        model, meta = import_state_dict(tmp_path / "w.pt", arch, 7, MEAN, STD)
        x = torch.rand(2, 3, 64, 64)
        normalized = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        with torch.no_grad():
            torch.testing.assert_close(model(x), net(normalized), rtol=1e-5, atol=1e-5)
        save_checkpoint(tmp_path / arch, model, meta)  # a robrep checkpoint, loaded back as any other
        loaded, _ = load_checkpoint(tmp_path / arch)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))
        assert meta["mean"] == MEAN and meta["source"] == arch.split(".")[0]
    with pytest.raises(CheckpointError, match="does not match: .*missing"):
        import_state_dict(tmp_path / "w.pt", "timm.resnet18", 7, MEAN, STD)  # convnext weights, resnet arch
    torch.save({"evil": nn.ReLU()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        import_state_dict(tmp_path / "evil.pt", "timm.resnet18", 7, MEAN, STD)
    with pytest.raises(CheckpointError, match="plain state dict imports into torchvision"):
        import_state_dict(tmp_path / "w.pt", "cifar_resnet18", 7, MEAN, STD)


def test_a_plan_reads_the_width_of_r_on_the_meta_device():
    """The fan-out's plan builds each model on the meta device (no weights, no data) to learn R's width and whether
    the fake ReLU applies."""
    from robrep.models import fake_relu_problem

    for arch, width, relu in [("torchvision.resnet18", 512, True), ("timm.convnext_atto", 320, False),
                              ("torchvision.vit_b_16", 768, False)]:
        with torch.device("meta"):
            model = create_model(arch, 10, MEAN, STD)  # in training mode, as built: the probe runs in eval mode
            problem = fake_relu_problem(model)
        assert model.representation_dim == width and model.training
        assert (problem is None) == relu and (relu or "fake_relu does not apply" in problem)
