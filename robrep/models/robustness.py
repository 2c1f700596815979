"""The MadryLab robustness library's own model classes: arch `robustness.cifar.<constructor>` (its cifar_models:
DenseNet121/161/169/201, densenet_cifar, VGG11-19, inceptionv3, the ResNets) or `robustness.imagenet.<constructor>`
(its imagenet_models: leaky_resnet18-152, alexnet, the DenseNets, VGGs, ResNets, ResNeXts, Wide ResNets).

Wrapped as any library's classifier (robrep/models/wrapped.py): R(x) is the input of the final Linear, which is the
library's own `with_latent` output, and its fake ReLU is found the same generic way. The hand-written ResNets and
VGG16s (hand.py) and torchvision's builders cover the published robust models without the library; this family
reaches its other architectures, and needs it installed: `pip install --no-deps robustness==1.2.1.post2` (its
model classes need only torch and torchvision).
"""

from __future__ import annotations

import sys
import types

import torch
from torch import nn

from robrep.core.errors import ConfigError
from robrep.models.wrapped import FAMILIES

INSTALL = "pip install --no-deps robustness==1.2.1.post2"
SIZES = {"cifar": 32, "imagenet": 224}  # the image size of each module's networks (their probe input)
# What the library's modules export that builds no classifier (its building blocks, a test)
NOT_MODELS = {"FakeReLU", "SequentialWithArgs", "BasicBlock", "Bottleneck", "BasicConv2d", "Transition", "test"}


def _module(family: str):
    """The library's cifar_models or imagenet_models. The latter import `torchvision.models.utils`, which
    torchvision has removed; they use one name of it, load_state_dict_from_url, for pretrained=True (never asked
    here): it is provided from torch.hub, where it now lives."""
    if family not in SIZES:
        raise ConfigError(f"arch 'robustness.{family}...': write robustness.cifar.<name> or robustness.imagenet.<name>")
    if family == "imagenet" and "torchvision.models.utils" not in sys.modules:
        utils = types.ModuleType("torchvision.models.utils")
        utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = utils
    try:
        if family == "cifar":
            from robustness import cifar_models as module
        else:
            from robustness import imagenet_models as module
    except ImportError as e:
        raise ConfigError(f"robustness.* models need the robustness library ({e}): {INSTALL}") from e
    return module


def constructors(family: str) -> list[str]:
    """Every classifier constructor of the library's cifar_models or imagenet_models."""
    module = _module(family)
    return sorted(n for n in dir(module) if n[:1].isalpha() and callable(getattr(module, n)) and n not in NOT_MODELS
                  and not isinstance(getattr(module, n), type))


def _build(name: str, num_classes: int) -> tuple[nn.Module, int]:
    family, _, constructor = name.partition(".")
    if constructor not in constructors(family):
        raise ConfigError(f"the robustness library's {family}_models has no model {constructor!r}; known: "
                          f"{', '.join(constructors(family))}")
    try:
        return getattr(_module(family), constructor)(num_classes=num_classes), SIZES[family]
    except TypeError as e:  # its ResNet18Thin passes its ResNet an argument that class does not take
        raise ConfigError(f"the robustness library cannot build its {family}_models.{constructor}: {e}") from e


FAMILIES["robustness"] = _build
