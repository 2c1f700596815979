"""Train-time augmentation drawn from a seeded torch generator, so the same config trains the same weights.

FFCV's RandomTranslate and RandomHorizontalFlip draw from numba's unseeded per-thread generators: two runs of the
same config saw different augmentations and trained different weights. These do the same on a decoded batch.
"""

from __future__ import annotations

import torch

SEEDED = ("translate", "crop_flip")  # the augments done here; rrc_flip stays in FFCV's decoder (not seeded)


def epoch_generator(rng_seed: int, epoch: int, rank: int) -> torch.Generator:
    """The generator of one rank's augmentations in one epoch: a resumed run replays the epoch it restarts."""
    return torch.Generator().manual_seed(((rng_seed * 1_000_003 + epoch) * 1_009 + rank) % (2**63))


def translate(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to `padding` pixels along each axis, zeros filling in (a random crop of the image
    zero-padded by `padding`, as FFCV's RandomTranslate). x: (B, C, H, W)."""
    if padding == 0:
        return x
    b, _, h, w = x.shape
    dy, dx = torch.randint(0, 2 * padding + 1, (2, b, 1), generator=generator).to(x.device)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    out = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    mirror = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(mirror[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, kind: str, padding: int, generator: torch.Generator) -> torch.Tensor:
    """The batch augmented as `kind` (one of SEEDED) says."""
    x = translate(x, padding, generator)
    return flip(x, generator) if kind == "crop_flip" else x
