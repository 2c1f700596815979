"""robrep's checkpoint format: `model.pt` (a plain state dict) beside `meta.json` (arch, classes, provenance), in a
folder at a local path or a URI (s3://...).

Loading uses `torch.load(weights_only=True)`: a checkpoint can hold tensors, never code.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from robrep.core.errors import CheckpointError, ConfigError, StorageError
from robrep.core.location import absolute, digest_bytes, exists, join, read_bytes, redact, write_bytes
from robrep.models import Wrapped, create_model

REQUIRED_META = ("arch", "num_classes", "mean", "std")


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict) -> str:
    """Write model.pt then meta.json to a folder at a path or URI. Each is written whole (robrep.core.location), and
    meta.json, which names the weights' digest, comes last: a reader never pairs it with other weights."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {missing}")
    directory = absolute(directory)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    meta = {**meta, "digest": digest_bytes(weights)}  # the weights' identity: part of every fan-out job id
    write_bytes(join(directory, "model.pt"), weights)
    write_bytes(join(directory, "meta.json"), json.dumps(meta, indent=2, sort_keys=True).encode())
    return directory


def model_digest(directory: str | Path) -> str:
    """The digest of a checkpoint's weights: from meta.json, or computed for checkpoints saved before it was kept."""
    return read_meta(directory).get("digest") or digest_bytes(read_bytes(join(absolute(directory), "model.pt")))


def read_meta(directory: str | Path) -> dict:
    where = join(absolute(directory), "meta.json")
    try:
        text = read_bytes(where)
    except FileNotFoundError as e:
        raise CheckpointError(
            f"no checkpoint at {redact(directory)!r}: meta.json is missing (train one with jobs.train)"
        ) from e
    except (OSError, StorageError) as e:
        raise CheckpointError(f"cannot read {redact(where)}: {e}") from e
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{redact(where)} is not valid JSON: {e}") from e


def model_from_meta(meta: dict, where: str = "meta.json") -> nn.Module:
    """A freshly initialised model of the architecture meta.json describes (arch, classes, normalisation)."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}")
    try:
        return create_model(meta["arch"], meta["num_classes"], meta["mean"], meta["std"], **meta.get("arch_kwargs", {}))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{where}: cannot build arch {meta['arch']!r}: {e}") from e


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model named in meta.json and load its weights. Raises CheckpointError on any mismatch."""
    meta = read_meta(directory)
    model = model_from_meta(meta, redact(directory))
    location = join(absolute(directory), "model.pt")
    weights = redact(location)
    try:
        blob = read_bytes(location)
    except (FileNotFoundError, OSError, StorageError) as e:
        raise CheckpointError(f"no weights at {weights}: {e}") from e
    if "digest" in meta and digest_bytes(blob) != meta["digest"]:
        raise CheckpointError(f"{weights} is not the file its meta.json describes (digest mismatch): it was "
                              "changed or half-copied; copy or save the checkpoint again")
    try:
        state = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/unsafe files
        raise CheckpointError(f"cannot read {weights}: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights} is not a state dict of tensors")
    _load_exact(model, state, f"{weights} (arch {meta['arch']!r})")
    model.eval()
    return model, meta


# The robustness library (MadryLab) saves {"model": state_dict, "epoch", "optimizer", "schedule"} where the
# state dict holds the model twice, under `module.model.` and `module.attacker.model.`, and the
# normalizer's (3, 1, 1) mean/std under `module.normalizer.new_mean` / `new_std`.
ROBUSTNESS_PREFIX = "module.model."
ROBUSTNESS_NORMALIZER = {"module.normalizer.new_mean": "normalize.mean", "module.normalizer.new_std": "normalize.std"}


def _load_file(path: str | Path, what: str) -> tuple[object, str]:
    """(what torch.load(weights_only=True) reads from the file at a path or URI, the location as shown)."""
    path = absolute(path)
    try:
        data = read_bytes(path)
    except (FileNotFoundError, OSError, StorageError) as e:
        raise CheckpointError(f"no {what} at {redact(path)!r}: {e}") from e
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), redact(path)
    except Exception as e:  # unsafe pickles and corrupt files raise several types
        raise CheckpointError(f"cannot read {redact(path)} with weights_only=True: {e}") from e


# A torchvision network the library trained as a custom architecture (make_and_restore_model(arch=<module>,
# add_custom_forward=True): the zoo's MNASNet, MobileNet-v2, ShuffleNet-v2) sits in its DummyModel, as `model`:
# keys module.model.model.<torchvision keys>.
DUMMY_MODEL = "model."
# Where the library's own class renamed a torchvision layer (its AlexNet's last Linear is `last_layer`).
ROBUSTNESS_RENAMES = {"alexnet": {"last_layer.": "classifier.6."}}


def _renamed(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def import_robustness_checkpoint(
    path: str | Path, arch: str, num_classes: int, meta: dict | None = None
) -> tuple[nn.Module, dict]:
    """Load a robustness-library checkpoint (e.g. the published robust ImageNet/CIFAR models) into `arch`.

    Raises CheckpointError when the file is unreadable, is not in that layout, or does not fit `arch`.
    """
    blob, path = _load_file(path, "robustness checkpoint")
    state = blob.get("model", blob.get("state_dict")) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no 'model' or 'state_dict' entry; keys: {list(blob)[:10]}")
    weights = {k[len(ROBUSTNESS_PREFIX):]: v for k, v in state.items() if k.startswith(ROBUSTNESS_PREFIX)}
    if not weights:
        raise CheckpointError(
            f"{path} is not in the robustness layout: no key starts with {ROBUSTNESS_PREFIX!r} "
            f"(first keys: {list(state)[:5]})"
        )
    for source, target in ROBUSTNESS_NORMALIZER.items():
        if source not in state:
            raise CheckpointError(f"{path} lacks {source!r}: cannot recover the model's normalization")
        weights[target] = state[source].reshape(1, -1, 1, 1)
    mean = state["module.normalizer.new_mean"].flatten().tolist()
    std = state["module.normalizer.new_std"].flatten().tolist()
    try:
        model = create_model(arch, num_classes, mean, std)
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    if isinstance(model, Wrapped):  # a torchvision architecture the library trained: its keys are torchvision's
        network = [k for k in weights if not k.startswith("normalize.")]
        if network and all(k.startswith(DUMMY_MODEL) for k in network):  # make_and_restore_model's DummyModel
            weights = {k[len(DUMMY_MODEL):] if k.startswith(DUMMY_MODEL) else k: v for k, v in weights.items()}
        renames = ROBUSTNESS_RENAMES.get(arch.split(".", 1)[1], {})
        weights = {k if k.startswith("normalize.") else f"net.{_renamed(k, renames)}": v for k, v in weights.items()}
    _load_exact(model, weights, f"{path} (as {arch})")
    model.eval()
    info = {
        "arch": arch, "num_classes": num_classes, "mean": mean, "std": std, "source": "robustness",
        "source_path": path, "epoch": blob.get("epoch"), **(meta or {}),
    }
    return model, info


def import_state_dict(path: str | Path, arch: str, num_classes: int, mean: list[float], std: list[float],
                      meta: dict | None = None) -> tuple[nn.Module, dict]:
    """Load a plain torchvision or timm state dict (arch `torchvision.<builder>` / `timm.<model>`), as the libraries
    and most papers publish them: the weights alone, or under "state_dict" / "model", with or without DataParallel's
    "module." prefix. Such a file holds no normalisation: `mean` and `std` state the one it was trained with.
    Raises CheckpointError when the file is unreadable or its keys do not fit `arch`."""
    blob, path = _load_file(path, "state dict")
    state = blob
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors (nor holds one under 'state_dict' or 'model')")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if len(mean) != len(std) or not all(s > 0 for s in std):
        raise CheckpointError(f"{path}: mean {mean} and std {std} must have one value per channel, std > 0")
    try:
        model = create_model(arch, num_classes, mean, std)
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    if not isinstance(model, Wrapped):
        raise CheckpointError(f"arch {arch!r}: a plain state dict imports into torchvision.<builder> or "
                              "timm.<model>; robustness-library checkpoints import with import_robustness_checkpoint")
    own = model.state_dict()
    weights = {f"net.{k}": v for k, v in state.items()}
    weights.update({k: own[k] for k in ("normalize.mean", "normalize.std")})
    _load_exact(model, weights, f"{path} (as {arch})")
    model.eval()
    info = {"arch": arch, "num_classes": num_classes, "mean": list(mean), "std": list(std),
            "source": arch.split(".", 1)[0], "source_path": path, **(meta or {})}
    return model, info


def import_robustbench(model_dir: str | Path, name: str, dataset: str, threat_model: str,
                       meta: dict | None = None) -> tuple[nn.Module, dict]:
    """Load a RobustBench model by name (arch robustbench.<dataset>.<threat model>.<name>) from the file RobustBench
    keeps at <model_dir>/<dataset>/<threat model>/<name>.pt, never downloading it. The class's own normalisation
    constants, where the file lacks them, are kept as RobustBench's loader keeps them; anything else missing,
    unexpected or mis-shaped is refused. Raises CheckpointError, saying where to fetch a missing file."""
    from robrep.models import robustbench

    try:
        dataset, threat_model, name = robustbench.parse(f"{dataset}.{threat_model}.{name}")
        arch = f"robustbench.{dataset}.{threat_model}.{name}"
        num_classes = robustbench.DATASETS[dataset][1]
        model = create_model(arch, num_classes, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    path = robustbench.checkpoint_path(absolute(model_dir), dataset, threat_model, name)
    if not exists(path):
        raise CheckpointError(f"no RobustBench checkpoint of {name} at {redact(path)}: "
                              + robustbench.fetch_hint(redact(absolute(model_dir)), dataset, threat_model, name,
                                                       redact(path)))
    blob, shown = _load_file(path, "RobustBench checkpoint")
    state = robustbench.checkpoint_weights(blob, name, model.net, shown)
    own = model.state_dict()
    weights = {f"net.{k}": v for k, v in state.items()}
    kept = [k for k in own if k not in weights and k.startswith("net.")
            and k.rsplit(".", 1)[-1] in robustbench.MAY_LACK]
    weights.update({k: own[k] for k in (*kept, "normalize.mean", "normalize.std")})
    _load_exact(model, weights, f"{shown} (as {arch})")
    model.eval()
    info = {"arch": arch, "num_classes": num_classes, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
            "source": "robustbench", "source_path": shown, "class_constants": kept, **(meta or {})}
    return model, info


def _load_exact(model: nn.Module, weights: dict, what: str) -> None:
    """load_state_dict that reports missing, unexpected and mis-shaped keys as one CheckpointError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(weights)) if weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{what} does not match: {len(missing)} missing {missing[:4]}, {len(unexpected)} unexpected "
            f"{unexpected[:4]}, {len(shapes)} mis-shaped {shapes[:3]}"
        )
    model.load_state_dict(weights)
