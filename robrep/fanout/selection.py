"""Which images and which coordinates of R a fan-out block uses: typed specs and deterministic selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from robrep.core.config import Count, NonNegative, Seed, distinct
from robrep.core.errors import ConfigError, DataError


@dataclass(frozen=True)
class IndexSpec:
    """Which images of the split: `first` n, an explicit `list`, n at `random` (seeded), or n `per_class`."""

    mode: Literal["first", "list", "random", "per_class"] = "first"
    n: Count = 20
    values: tuple[NonNegative, ...] = ()
    rng_seed: Seed = 0  # random, per_class

    def validate(self) -> None:
        if self.mode == "list" and not self.values:
            raise ConfigError("indices mode list needs values: [i, j, ...]")
        distinct(self.values, "indices.values", "image")


@dataclass(frozen=True)
class CoordinateSpec:
    """Which coordinates of R: a `list`, n at `random` (seeded), or the `top` n of each start image."""

    mode: Literal["list", "random", "top"] = "random"
    n: Count = 4
    values: tuple[NonNegative, ...] = ()
    rng_seed: Seed = 0  # random

    def validate(self) -> None:
        if self.mode == "list" and not self.values:
            raise ConfigError("coordinates mode list needs values: [i, j, ...]")
        distinct(self.values, "coordinates.values", "coordinate")


def select_indices(spec: IndexSpec, labels: np.ndarray) -> list[int]:
    """The split's images the jobs use; DataError when one is out of range."""
    size = len(labels)
    if spec.mode == "list":
        bad = [i for i in spec.values if not 0 <= i < size]
        if bad:
            raise DataError(f"fanout.indices {bad[:5]} are out of range: the split has {size} images (0..{size - 1})")
        return list(spec.values)
    if spec.n > size or spec.n < 1:
        raise DataError(f"fanout.indices.n={spec.n} but the split has {size} images")
    if spec.mode == "first":
        return list(range(spec.n))
    rng = np.random.default_rng(spec.rng_seed)
    if spec.mode == "random":
        return sorted(rng.choice(size, spec.n, replace=False).tolist())
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen += rng.choice(members, min(spec.n, len(members)), replace=False).tolist()
    return sorted(chosen)


def select_coordinates(spec: CoordinateSpec, dim: int) -> list[int]:
    """Coordinates of R; `top` gives -1..-n, resolved per start image by the worker (-1-r = r-th most active)."""
    if spec.mode == "list":
        bad = [c for c in spec.values if not 0 <= c < dim]
        if bad:
            raise ConfigError(f"coordinates {bad[:5]} out of range: the representation has {dim} coordinates")
        return list(spec.values)
    if spec.n > dim:
        raise ConfigError(f"coordinates n={spec.n} is more than the representation's {dim} coordinates")
    if spec.mode == "random":
        return sorted(np.random.default_rng(spec.rng_seed).choice(dim, spec.n, replace=False).tolist())
    return [-1 - r for r in range(spec.n)]


def other_class_source(labels: np.ndarray, target_index: int, rng_seed: int) -> int:
    """An image of a different class than the target, chosen deterministically from (seed, target)."""
    candidates = np.flatnonzero(labels != labels[target_index])
    return int(np.random.default_rng([rng_seed, target_index]).choice(candidates))
