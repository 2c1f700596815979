"""scikit-learn's digits: 1,797 real 8x8 grey images shipped inside the package, so nothing is downloaded."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = 10
LABEL_NAMES = [str(i) for i in range(10)]


def load_digits_rgb(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """All digits resized to (N, resolution, resolution, 3) uint8 (grey copied to RGB), labels (N,) int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0,1]
    grey = F.interpolate(grey, size=(resolution, resolution), mode="bilinear", align_corners=False)
    rgb = (grey.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1)
    return np.ascontiguousarray(rgb.numpy()), bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray, test_fraction: float, rng_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic stratified split: the same rng_seed gives the same (train, test) indices."""
    rng = np.random.default_rng(rng_seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
