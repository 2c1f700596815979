"""RobustBench's models by name: arch `robustbench.<dataset>.<threat model>.<name>`, e.g.
`robustbench.cifar10.Linf.Carmon2019Unlabeled`, `robustbench.imagenet.Linf.Salman2020Do_R18`.

The network is RobustBench's own class from its model zoo (`robustbench.model_zoo`), wrapped as any other library's
classifier (robrep/models/wrapped.py): R(x) is the input of its final Linear. RobustBench's networks take [0, 1]
pixels and normalise inside (its `mu`/`sigma` buffers or an ImageNormalizer layer), so robrep's own normalisation
is the identity (mean 0, std 1).

Only the model zoo is imported, never robustbench/__init__.py: that file imports RobustBench's evaluation and
download tools (`autoattack`, `gdown`, `pkg_resources`), which robrep does not use and of which PyPI has no
`autoattack` and setuptools >= 81 no `pkg_resources`. The zoo needs torch, torchvision, timm, geotorch and
torchdiffeq: `pip install --no-deps robustbench==1.1.1 && pip install geotorch torchdiffeq`.

Weights are never downloaded: `checkpoint_path` says where RobustBench's own loader keeps the file
(<model_dir>/<dataset>/<threat model>/<name>.pt) and `checkpoint_weights` reads it as that loader does.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
import warnings

from torch import nn

from robrep.core.errors import CheckpointError, ConfigError
from robrep.core.location import join
from robrep.models.wrapped import FAMILIES

# robrep's dataset name -> (RobustBench's, classes, image size)
DATASETS = {"cifar10": ("cifar10", 10, 32), "cifar100": ("cifar100", 100, 32), "imagenet": ("imagenet", 1000, 224)}
THREAT_MODELS = ("Linf", "L2", "corruptions")
INSTALL = "pip install --no-deps robustbench==1.1.1 && pip install geotorch torchdiffeq"
# Keys RobustBench's loader lets a published file lack (its _safe_load_state_dict): normalisation constants the
# class itself defines. Nothing else may be missing.
MAY_LACK = ("mu", "sigma", "mean", "std")


def _zoo() -> dict:
    """RobustBench's registry: {BenchmarkDataset: {ThreatModel: {name: {"model": builder, "gdrive_id": ...}}}}."""
    if "robustbench" not in sys.modules:
        spec = importlib.util.find_spec("robustbench")
        if spec is None:
            raise ConfigError(f"robustbench.* models need the robustbench package: {INSTALL}")
        sys.modules["robustbench"] = importlib.util.module_from_spec(spec)  # the package, without its __init__
    try:
        with warnings.catch_warnings():  # its architectures import timm's old module paths, which timm warns about
            warnings.simplefilter("ignore", FutureWarning)
            from robustbench.model_zoo import model_dicts
    except ImportError as e:
        raise ConfigError(f"robustbench's model zoo cannot be imported ({e}): {INSTALL}") from e
    return model_dicts


def parse(name: str) -> tuple[str, str, str]:
    """'cifar10.Linf.Carmon2019Unlabeled' -> (dataset, threat model, model name), each checked."""
    parts = name.split(".", 2)
    if len(parts) != 3:
        raise ConfigError(f"arch 'robustbench.{name}': write robustbench.<dataset>.<threat model>.<name>, e.g. "
                          "robustbench.cifar10.Linf.Carmon2019Unlabeled")
    dataset, threat, model = parts
    if dataset not in DATASETS:
        raise ConfigError(f"arch 'robustbench.{name}': unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if threat not in THREAT_MODELS:
        raise ConfigError(f"arch 'robustbench.{name}': unknown threat model {threat!r}; known: "
                          f"{', '.join(THREAT_MODELS)}")
    return dataset, threat, model


def entry(dataset: str, threat: str, model: str) -> dict:
    """RobustBench's registry entry of a model, or a ConfigError naming the closest names."""
    zoo = _zoo()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    models = zoo[BenchmarkDataset(DATASETS[dataset][0])].get(ThreatModel(threat), {})
    if model not in models:
        close = difflib.get_close_matches(model, list(models), n=5, cutoff=0.5)
        raise ConfigError(f"RobustBench has no {dataset} {threat} model {model!r}"
                          + (f"; did you mean: {', '.join(close)}" if close else f" ({len(models)} models there)"))
    found = models[model]
    if isinstance(found["gdrive_id"], list):
        raise ConfigError(f"RobustBench {dataset} {threat} {model} is an ensemble of {len(found['gdrive_id'])} "
                          "networks: R(x), one classifier's penultimate layer, is not defined for it")
    if found["gdrive_id"] is None or (dataset == "imagenet" and "Standard" in model):
        raise ConfigError(f"RobustBench {dataset} {threat} {model} has no checkpoint of its own in the zoo "
                          "(its builder takes timm's or torchvision's published weights, which robrep never "
                          "downloads): import those weights as timm.<name> or torchvision.<name> with --state-dict")
    return found


def _build(name: str, num_classes: int) -> tuple[nn.Module, int]:
    dataset, threat, model = parse(name)
    classes, size = DATASETS[dataset][1:]
    if num_classes != classes:
        raise ConfigError(f"arch 'robustbench.{name}' has {classes} classes ({dataset}), not {num_classes}")
    return entry(dataset, threat, model)["model"](), size


FAMILIES["robustbench"] = _build


def checkpoint_path(model_dir: str, dataset: str, threat: str, model: str) -> str:
    """Where RobustBench's load_model keeps a model's file: <model_dir>/<dataset>/<threat model>/<name>.pt (a
    local folder or a URI)."""
    return join(model_dir, DATASETS[dataset][0], threat, f"{model}.pt")


def fetch_hint(model_dir: str, dataset: str, threat: str, model: str, path: str) -> str:
    """What to run, on a machine with internet access, to get a model's file where robrep looks for it."""
    gdrive = entry(dataset, threat, model)["gdrive_id"]
    return (f"fetch it where there is internet (python -c \"from robustbench.utils import load_model; "
            f"load_model('{model}', model_dir='{model_dir}', dataset='{DATASETS[dataset][0]}', "
            f"threat_model='{threat}')\", or Google Drive id {gdrive}) and put it at {path}")


def checkpoint_weights(blob: object, model: str, net: nn.Module, where: str) -> dict:
    """The state dict for `net` (RobustBench's own class of `model`) in a file as RobustBench publishes it, read as
    its loader does: the "last" of two snapshots (Kireev2021Effectiveness*, Andriushchenko2020Understanding), the
    weights under "state_dict" or alone, "module." and "model." prefixes removed, and put back under "model." where
    the class is RobustBench's normalize_model wrapper (its ImageNet models). Raises CheckpointError where the
    file holds no state dict."""
    if isinstance(blob, dict) and ("Kireev2021Effectiveness" in model or model == "Andriushchenko2020Understanding"):
        blob = blob.get("last")
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{where} holds no state dict (a dict of tensors, or one under 'state_dict')")
    for prefix in ("module.", "model."):
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    if isinstance(net, nn.Sequential) and list(net._modules) == ["normalize", "model"]:
        own = net.state_dict()
        wrapped = {k if k.startswith("normalize.") else f"model.{k}": v for k, v in state.items()}
        if len(own.keys() & wrapped.keys()) > len(own.keys() & state.keys()):
            state = wrapped
    return state
