"""Models with a representation layer R(x) (the paper's penultimate layer), and the one way to build them.

    create_model("resnet50", 1000, mean, std)                  # hand-written (robrep/models/hand.py)
    create_model("torchvision.densenet161", 1000, mean, std)   # any torchvision or timm classifier
    create_model("timm.convnext_atto", 10, mean, std)          # (robrep/models/wrapped.py)
    create_model("robustbench.cifar10.Linf.Carmon2019Unlabeled", 10, [0] * 3, [1] * 3)   # robustbench.py
    create_model("robustness.cifar.DenseNet121", 10, mean, std)   # the robustness library's classes: robustness.py
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from robrep.core.errors import ConfigError
from robrep.models import robustbench, robustness  # noqa: F401  (register the robustbench.* and robustness.* families)
from robrep.models.base import Normalize, _FakeReLU, input_channels
from robrep.models.hand import ARCHS, VGG16, CifarResNet, ResNet, SmallCNN
from robrep.models.wrapped import FAMILIES, Wrapped, is_wrapped

__all__ = ["ARCHS", "FAMILIES", "VGG16", "CifarResNet", "Normalize", "ResNet", "SmallCNN", "Wrapped", "_FakeReLU",
           "create_model", "fake_relu_problem", "input_channels", "list_models"]


def fake_relu_problem(model: nn.Module) -> str | None:
    """Why the fake ReLU does not apply to `model` (its R(x) follows no ReLU), or None where it does."""
    return model.fake_relu_problem() if isinstance(model, Wrapped) else None


def list_models() -> list[str]:
    """The hand-written architectures; any `torchvision.<builder>` or `timm.<model>` builds too."""
    return sorted(ARCHS)


def create_model(name: str, num_classes: int, mean: Sequence[float], std: Sequence[float], **kwargs) -> nn.Module:
    """Build an architecture: a hand-written one (list_models()), or `torchvision.<builder>` / `timm.<model>`.
    Raises ConfigError naming the known ones if `name` is unknown."""
    if is_wrapped(name):
        return Wrapped(name, num_classes, mean, std, **kwargs)
    if name not in ARCHS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}, or any "
                          f"{' / '.join(f + '.<name>' for f in FAMILIES)} classifier")
    if name != "small_cnn" and len(mean) != 3:
        raise ConfigError(f"model {name!r} takes RGB images, and this dataset has {len(mean)} channel(s): train "
                          "small_cnn on it, or build the dataset as RGB")
    return ARCHS[name](num_classes=num_classes, mean=mean, std=std, **kwargs)
