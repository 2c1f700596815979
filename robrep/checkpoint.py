"""robrep's checkpoint format: `model.pt` (a plain state dict) beside `meta.json` (arch, classes, provenance).

Loading uses `torch.load(weights_only=True)`: a checkpoint can hold tensors, never code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from robrep.errors import CheckpointError, ConfigError
from robrep.models import create_model

REQUIRED_META = ("arch", "num_classes", "mean", "std")


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write model.pt then meta.json (each via a temp file + rename, so no half-written file is left)."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {missing}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = directory / "model.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / "model.pt")
    tmp = directory / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, directory / "meta.json")
    return directory


def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {str(directory)!r}: {path.name} is missing (train one with jobs.train)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model named in meta.json and load its weights. Raises CheckpointError on any mismatch."""
    meta = read_meta(directory)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{directory}/meta.json lacks {missing}")
    try:
        model = create_model(
            meta["arch"], meta["num_classes"], meta["mean"], meta["std"], **meta.get("arch_kwargs", {})
        )
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{directory}: cannot build arch {meta['arch']!r}: {e}") from e
    weights = Path(directory) / "model.pt"
    if not weights.is_file():
        raise CheckpointError(f"no weights at {weights}")
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/unsafe files
        raise CheckpointError(f"cannot read {weights}: {e}") from e
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{weights} does not match arch {meta['arch']!r}: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{weights} does not match arch {meta['arch']!r}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    model.eval()
    return model, meta
