"""Models with a representation layer R(x) (the paper's penultimate layer), and the model registry.

Every model takes [0,1] images and normalizes inside (mean/std are buffers), so attacks, objectives
and stored images all live in [0,1] pixel units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from robrep.errors import ConfigError


class _FakeReLU(torch.autograd.Function):
    """ReLU forward, identity backward: a dead unit still passes gradient (paper A.6.1, Eq. 5)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def fake_relu(x: torch.Tensor) -> torch.Tensor:
    return _FakeReLU.apply(x)


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean/std stored as buffers so they travel with checkpoints."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out))


class SmallCNN(nn.Module):
    """Three conv-BN blocks and global average pooling; sized for CPU minutes on 16-32 px images.

    R(x) is the pooled output of the last ReLU, width `4 * width`, as for a ResNet's avgpool.
    """

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float], width: int = 32):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.block1 = _conv_bn(3, width, 1)
        self.block2 = _conv_bn(width, 2 * width, 2)
        self.block3 = _conv_bn(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)
        self.representation_dim = 4 * width

    def representation(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        """x: (B, 3, H, W) in [0,1] -> R(x): (B, D). `fake_relu` swaps the last ReLU's backward."""
        h = torch.relu(self.block1(self.normalize(x)))
        h = torch.relu(self.block2(h))
        h = self.block3(h)
        h = _FakeReLU.apply(h) if fake_relu else torch.relu(h)
        return h.mean(dim=(2, 3))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [0,1] -> logits (B, num_classes)."""
        return self.fc(self.representation(x))


_REGISTRY: dict[str, Callable[..., nn.Module]] = {"small_cnn": SmallCNN}


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, mean: Sequence[float], std: Sequence[float], **kwargs) -> nn.Module:
    """Build a registered architecture. Raises ConfigError naming the known ones if `name` is unknown."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name](num_classes=num_classes, mean=mean, std=std, **kwargs)
