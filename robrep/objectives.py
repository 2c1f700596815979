"""The paper's objectives, each a per-example loss (B,) that PGD minimises."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def inversion_loss(rep: torch.Tensor, target_rep: torch.Tensor) -> torch.Tensor:
    """Eq. 4 normalised as in Fig. 4: ||R(x) - R(x_t)||_2 / ||R(x_t)||_2. rep, target_rep: (B, D) -> (B,)."""
    return (rep - target_rep).norm(dim=1) / target_rep.norm(dim=1).clamp_min(1e-12)


def untargeted_ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-CE(logits, y): minimising it maximises the true-class loss (Eq. 3's inner max). (B, K) -> (B,)."""
    return -F.cross_entropy(logits, labels, reduction="none")
