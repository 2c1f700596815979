"""The hand-written architectures: the CPU demo's small_cnn and every architecture of the robustness library's
published robust models (its key names), each with its own `representation`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from robrep.core.errors import ConfigError
from robrep.models.base import Normalize, _activate


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out))


def _stages_from_blocks(state_dict: dict, prefix: str, *_) -> None:
    """Checkpoints saved before small_cnn had a depth name its three stages block1..block3: read them as stages."""
    for i in (1, 2, 3):
        for key in [k for k in state_dict if k.startswith(f"{prefix}block{i}.")]:
            state_dict[f"{prefix}stages.{i - 1}.{key[len(prefix) + len(f'block{i}.'):]}"] = state_dict.pop(key)


def small_cnn_channels(width: int, depth: int) -> list[int]:
    """The channels of small_cnn's stages: `width`, doubled at each of the first two downsamplings, then kept."""
    return [width * 2 ** min(i, 2) for i in range(depth)]


class SmallCNN(nn.Module):
    """`depth` conv-BN-ReLU stages (strides 1, 2, 2, ...; channels from small_cnn_channels) and an average pool to a
    `pool` x `pool` grid; sized for CPU minutes on 16-32 px images. Takes as many channels as `mean` has (1 for a
    grey dataset).

    R(x) is the pooled output of the last ReLU, flattened: C * pool**2 values. pool=1 is global average pooling, as
    a ResNet's avgpool; pool=2 keeps where in the image a feature fired (left/right, top/bottom), which a global
    average loses and an inversion then cannot recover (the demo's choice: see digits.yaml).
    """

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float], width: int = 32,
                 depth: int = 3, pool: int = 1):
        super().__init__()
        if not (1 <= depth <= 8 and 1 <= width <= 4096 and 1 <= pool <= 16):
            raise ConfigError(f"small_cnn: width={width}, depth={depth}, pool={pool}: need width in [1, 4096], "
                              "depth in [1, 8], pool in [1, 16]")
        self.normalize = Normalize(mean, std)
        self.pool = pool
        channels = small_cnn_channels(width, depth)
        self.stages = nn.ModuleList(_conv_bn(c_in, c_out, 1 if i == 0 else 2) for i, (c_in, c_out) in
                                    enumerate(zip([len(mean), *channels[:-1]], channels, strict=True)))
        self.representation_dim = channels[-1] * pool * pool
        self.fc = nn.Linear(self.representation_dim, num_classes)
        self._register_load_state_dict_pre_hook(_stages_from_blocks)

    def representation(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        """x: (B, C, H, W) in [0,1] -> R(x): (B, D). `fake_relu` swaps the last ReLU's backward."""
        h = self.normalize(x)
        for stage in self.stages[:-1]:
            h = torch.relu(stage(h))
        h = _activate(self.stages[-1](h), fake_relu)
        return torch.flatten(F.adaptive_avg_pool2d(h, self.pool), 1)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0,1] -> logits (B, num_classes)."""
        return self.fc(self.representation(x))


def _torchvision_block(block: nn.Module, x: torch.Tensor, fake_relu: bool) -> torch.Tensor:
    """torchvision's BasicBlock/Bottleneck forward, with the final ReLU optionally fake."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):
        out = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(out)))))
    else:
        out = block.bn2(block.conv2(out))
    return _activate(out + identity, fake_relu)


# depth -> (block, blocks per stage), as torchvision and the robustness library build them (ImageNet and CIFAR alike)
RESNET_DEPTHS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3]),
                 101: ("bottleneck", [3, 4, 23, 3]), 152: ("bottleneck", [3, 8, 36, 3])}


class ResNet(torchvision.models.ResNet):
    """torchvision's ImageNet ResNet (7x7 stem); R(x) is the avgpool output. Its state-dict keys are
    torchvision's (and the robustness library's), plus `normalize.mean` / `normalize.std`.

    width_per_group=64*k gives the library's wide_resnet50_k (k = 2..6: wider bottlenecks)."""

    def __init__(self, depth: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 width_per_group: int = 64):
        block, layers = RESNET_DEPTHS[depth]
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        super().__init__(block, layers, num_classes=num_classes, width_per_group=width_per_group)
        self.normalize = Normalize(mean, std)
        self.representation_dim = self.fc.in_features

    def representation(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        """x: (B, 3, H, W) in [0,1] -> (B, 512 or 2048)."""
        h = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        h = self.layer4[:-1](self.layer3(self.layer2(self.layer1(h))))
        h = _torchvision_block(self.layer4[-1], h, fake_relu)
        return torch.flatten(self.avgpool(h), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.representation(x))


class VGG16(torchvision.models.VGG):
    """torchvision's VGG16, with batch norm after every convolution when `batch_norm` (the library's vgg16_bn);
    R(x) is the last 4096-d hidden layer, after its ReLU, as the library's `with_latent`."""

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float], batch_norm: bool = False):
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=batch_norm)
        super().__init__(features, num_classes=num_classes)
        self.normalize = Normalize(mean, std)
        self.representation_dim = 4096

    def representation(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        """x: (B, 3, H >= 32, W >= 32) in [0,1] -> (B, 4096)."""
        h = torch.flatten(self.avgpool(self.features(self.normalize(x))), 1)
        h = self.classifier[:3](h)  # Linear, ReLU, Dropout
        return _activate(self.classifier[3](h), fake_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[5:](self.representation(x))  # Dropout, Linear


def _cifar_shortcut(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """The identity, or a strided 1x1 conv + BN where the shape changes (the library's `shortcut`)."""
    if stride == 1 and c_in == c_out:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class _CifarBlock(nn.Module):
    """The 3x3 BasicBlock of CIFAR ResNets, with the robustness library's key names (`shortcut`)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _cifar_shortcut(c_in, planes, stride)

    def forward(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return _activate(out + self.shortcut(x), fake_relu)


class _CifarBottleneck(nn.Module):
    """The library's CIFAR Bottleneck: 1x1, 3x3 (strided), 1x1 to 4x planes, with a `shortcut`."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = _cifar_shortcut(c_in, 4 * planes, stride)

    def forward(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        out = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return _activate(self.bn3(self.conv3(out)) + self.shortcut(x), fake_relu)


class CifarResNet(nn.Module):
    """The robustness library's CIFAR ResNets (18, 34: BasicBlock; 50, 101, 152: Bottleneck; `width` multiplies
    the channels, the library's `wm`: 5 in its ResNet18Wide): a 3x3 stride-1 stem for 32 px images, its key names;
    R(x) is the pooled output of the last block (512-d or 2048-d at width 1). The library pools with
    avg_pool2d(4), which is the same global average at 32 px; here it is global at every size."""

    def __init__(self, depth: int, num_classes: int, mean: Sequence[float], std: Sequence[float], width: int = 1):
        super().__init__()
        block, layers = RESNET_DEPTHS[depth]
        block = {"basic": _CifarBlock, "bottleneck": _CifarBottleneck}[block]
        widths = [64 * width, 128 * width, 256 * width, 512 * width]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c_in = widths[0]
        for i, (planes, blocks) in enumerate(zip(widths, layers, strict=True), start=1):
            strides = [1 if i == 1 else 2] + [1] * (blocks - 1)
            layer = []
            for stride in strides:
                layer.append(block(c_in, planes, stride))
                c_in = planes * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.linear = nn.Linear(c_in, num_classes)
        self.representation_dim = c_in

    def representation(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        """x: (B, 3, H, W) in [0,1] -> (B, 512 or 2048, times width)."""
        h = torch.relu(self.bn1(self.conv1(self.normalize(x))))
        h = self.layer4[:-1](self.layer3(self.layer2(self.layer1(h))))
        h = self.layer4[-1](h, fake_relu=fake_relu)
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.representation(x))


# Every ResNet of the robustness library's imagenet_models and cifar_models, under the library's own names (its
# CIFAR ones prefixed cifar_), its VGG16s, and the CPU demo's small_cnn. The library's other ImageNet architectures
# (densenet, vgg, resnext, alexnet) are torchvision's with torchvision's keys: torchvision.<name>.
ARCHS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    **{f"cifar_resnet{d}": partial(CifarResNet, d) for d in RESNET_DEPTHS},
    "cifar_resnet18_wide": partial(CifarResNet, 18, width=5),
    **{f"resnet{d}": partial(ResNet, d) for d in RESNET_DEPTHS},
    **{f"wide_resnet50_{k}": partial(ResNet, 50, width_per_group=64 * k) for k in range(2, 7)},
    "wide_resnet101_2": partial(ResNet, 101, width_per_group=128),
    "vgg16": VGG16,
    "vgg16_bn": partial(VGG16, batch_norm=True),
}
