"""What every robrep model shares: [0,1] images in, normalisation inside (mean/std are buffers, so attacks,
objectives and stored images all live in [0,1] pixel units), and the fake ReLU of the paper's visualizations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class _FakeReLU(torch.autograd.Function):
    """ReLU forward, identity backward: a dead unit still passes gradient (paper A.6.1, Eq. 5)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean/std stored as buffers so they travel with checkpoints."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _activate(x: torch.Tensor, fake: bool) -> torch.Tensor:
    return _FakeReLU.apply(x) if fake else torch.relu(x)



def input_channels(model: nn.Module) -> int:
    """How many channels a robrep model takes: its normalisation's (1 for a grey dataset)."""
    return model.normalize.mean.shape[1]
