"""Any torchvision or timm classifier as a robrep model: arch `torchvision.<builder>` (e.g. torchvision.densenet161,
torchvision.convnext_tiny, torchvision.vit_b_16) or `timm.<model name>` (e.g. timm.resnet50, timm.convnext_atto).

R(x) is the input of the network's final classifier layer (for timm: what `forward_head(..., pre_logits=True)`
returns), taken from that layer as it runs: nothing per architecture. The layer is found from the network's own
structure (timm: `get_classifier()`; torchvision: its last Linear, which must give the logits), and checked on a
probe input when the model is built. Normalisation is part of the model (`normalize`), as for every robrep model.

The fake ReLU (paper A.6.1) applies where R(x) is a ReLU's output, pooled, flattened or dropped out after it (ResNets,
ResNeXts, Wide ResNets, DenseNets, VGGs, ShuffleNets, MNASNets): the last ReLU the network calls before its head is
made identity-backward. Where R(x) follows another function (ReLU6, hard-swish, SiLU, GELU, a LayerNorm: MobileNets,
EfficientNets, ConvNeXts, ViTs, Swins) it does not apply, and asking for it is a ConfigError that says so.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from robrep.core.errors import ConfigError
from robrep.models.base import Normalize, _FakeReLU

_RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
# What may come between the last ReLU and the classifier's input for R(x) to still be "a ReLU's output": pooling,
# reshaping and (eval-mode) dropout, each of which passes a fake ReLU's gradient on unchanged in kind.
# Max pooling commutes with a ReLU (both monotone); a copy (clone) changes nothing.
_AFTER_RELU = {F.adaptive_avg_pool2d, F.avg_pool2d, F.dropout, torch.flatten, torch.Tensor.flatten, torch.mean,
               torch.Tensor.mean, torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.contiguous,
               torch.squeeze, torch.Tensor.squeeze, F.adaptive_max_pool2d, F.max_pool2d, torch.clone,
               torch.Tensor.clone}


def _torchvision(name: str, num_classes: int) -> tuple[nn.Module, int]:
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes), 224
    except ValueError as e:
        raise ConfigError(f"unknown torchvision model {name!r} (torchvision.{name}); known: "
                          f"{', '.join(torchvision.models.list_models(torchvision.models))}") from e


def _timm(name: str, num_classes: int) -> tuple[nn.Module, int]:
    try:
        import timm
    except ImportError as e:
        raise ConfigError(f"arch 'timm.{name}' needs the timm package: pip install timm") from e
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r} (timm.{name}); list them with timm.list_models()")
    net = timm.create_model(name, pretrained=False, num_classes=num_classes)
    config = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    return net, int(config.get("input_size", (3, 224, 224))[-1])


# family -> builder(name, num_classes) -> (the library's network, randomly initialised; the image size it was made
# for, its probe input's size). Weights come from a checkpoint, never a download. robustbench.py adds its own.
FAMILIES: dict[str, Callable[[str, int], tuple[nn.Module, int]]] = {"torchvision": _torchvision, "timm": _timm}


def is_wrapped(arch: str) -> bool:
    return arch.split(".", 1)[0] in FAMILIES and "." in arch


def build_network(arch: str, num_classes: int) -> tuple[nn.Module, int]:
    """The library's own network for `arch` and its image size."""
    family, name = arch.split(".", 1)
    return FAMILIES[family](name, num_classes)


def _head_name(net: nn.Module, arch: str, num_classes: int) -> str:
    """The final classifier layer's name in `net`: timm names it (get_classifier); in torchvision it is the last
    Linear."""
    names = {id(m): n for n, m in net.named_modules()}
    head = net.get_classifier() if hasattr(net, "get_classifier") else \
        next((m for m in reversed(list(net.modules())) if isinstance(m, nn.Linear)), None)
    if not isinstance(head, nn.Linear) or head.out_features != num_classes:
        found = f"a Linear with {head.out_features}" if isinstance(head, nn.Linear) else type(head).__name__
        raise ConfigError(f"{arch}: its final classifier layer is not a Linear with {num_classes} outputs "
                          f"({found}); R(x), the input of that layer, is not defined for it")
    return names[id(head)]


class _Log(TorchFunctionMode):
    """Records the torch functions a forward calls that return a tensor, until `stop` is set."""

    def __init__(self):
        super().__init__()
        self.calls: list = []
        self.stop = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.stop and isinstance(out, torch.Tensor):
            self.calls.append(func)
        return out


class _FakeLast(TorchFunctionMode):
    """Runs the n-th ReLU call of a forward as the fake ReLU (identity backward)."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.seen = n, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELUS:
            self.seen += 1
            if self.seen == self.n:
                return _FakeReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


class Wrapped(nn.Module):
    """A torchvision or timm classifier on [0,1] images: `normalize` then the library's network (`net`, its own
    state-dict keys under `net.`). R(x) is the input of its final classifier layer."""

    def __init__(self, arch: str, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 image_size: int | None = None):
        super().__init__()
        self.arch = arch
        self.normalize = Normalize(mean, std)
        self.net, size = build_network(arch, num_classes)
        self.head_name = _head_name(self.net, arch, num_classes)
        self.representation_dim = self.head.in_features
        self.probe_shape = (len(mean), image_size or size, image_size or size)
        self._captured: list[torch.Tensor] = []
        self._capturing = False
        self.head.register_forward_pre_hook(self._capture)
        self._relu_call: int | None | str = None  # the ReLU call whose output R(x) is; a str: why there is none
        self._check_head()

    @property
    def head(self) -> nn.Linear:
        """The network's final classifier layer (a module of `net`, not a second copy)."""
        return self.net.get_submodule(self.head_name)

    def _capture(self, module: nn.Module, inputs: tuple) -> None:
        if self._capturing:
            self._captured.append(inputs[0])

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R(x), logits) of one forward of the network."""
        self._captured.clear()
        self._capturing = True
        try:
            logits = self.net(self.normalize(x))
        finally:
            self._capturing = False
        if len(self._captured) != 1:
            raise ConfigError(f"{self.arch}: its classifier layer ran {len(self._captured)} times in one forward; "
                              "R(x) is not defined for it")
        return torch.flatten(self._captured.pop(), 1), logits

    def _check_head(self) -> None:
        """On a probe input: the head's output is the network's output (no layer after it). On the meta device
        (a plan reading R's width) only the shapes are checked."""
        was = self.training
        self.eval()
        with torch.no_grad():
            rep, logits = self._run(torch.rand(2, *self.probe_shape))
            if rep.device.type != "meta" and not torch.allclose(self.head(rep), logits, rtol=1e-5, atol=1e-5):
                raise ConfigError(f"{self.arch}: its output is not its last Linear's; R(x) is not defined for it")
        self.train(was)

    def _last_relu(self, x: torch.Tensor) -> int:
        """Which ReLU call of a forward R(x) is the output of (found once, on the first input asked for)."""
        if self._relu_call is None:
            log = _Log()
            hook = self.head.register_forward_pre_hook(lambda *_: setattr(log, "stop", True))
            was = self.training
            self.eval()  # one image: batch-norm in training mode could not take it
            try:
                with torch.no_grad(), log:
                    self.net(self.normalize(x[:1]))
            finally:
                hook.remove()
                self.train(was)
            relus = [i for i, f in enumerate(log.calls) if f in _RELUS]
            after = log.calls[relus[-1] + 1:] if relus else []
            others = [getattr(f, "__name__", str(f)) for f in after if f not in _AFTER_RELU]
            if not relus or others:
                self._relu_call = (f"fake_relu does not apply to {self.arch}: its R(x) is not a ReLU's output "
                                   f"({'no ReLU' if not relus else 'after its last ReLU: ' + ', '.join(others[:3])})")
            else:
                self._relu_call = len(relus)
        if isinstance(self._relu_call, str):
            raise ConfigError(self._relu_call)
        return self._relu_call

    def fake_relu_problem(self) -> str | None:
        """Why the fake ReLU does not apply to this network, or None (on a probe input; works on the meta device)."""
        try:
            self._last_relu(torch.zeros(1, *self.probe_shape, device=self.normalize.mean.device))
        except ConfigError as e:
            return str(e)
        return None

    def representation(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        """x: (B, C, H, W) in [0,1] -> R(x): (B, D)."""
        if not fake_relu:
            return self._run(x)[0]
        with _FakeLast(self._last_relu(x)):
            return self._run(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0,1] -> logits (B, num_classes)."""
        return self.net(self.normalize(x))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A plain dict of tensors (robrep's model.pt, loaded with weights_only) has lost the modules' layout
        versions, which some need (torchvision's MNASNet): they are this code's, which saved it."""
        if getattr(state_dict, "_metadata", None) is None:
            state_dict = OrderedDict(state_dict)
            state_dict._metadata = self.state_dict()._metadata
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
