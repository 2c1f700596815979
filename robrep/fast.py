"""The model as PGD runs it: the same function as the trained model, made fast for its device.

Two settings, named the same from config key to argument: `precision` ("fp32" | "bf16") and `compile`
(false | true; YAML reads `on`/`off` as booleans). `FastModel` is a frozen copy of a model for the PGD loop:
- its parameters have requires_grad=False: PGD differentiates the input only, so a compiled backward computes
  input gradients and no weight gradients;
- every batch-norm that normalises one convolution's output is folded into that convolution (exact for an
  eval-mode model: the batch-norm is a per-channel affine map of the convolution's output, so it becomes the
  convolution's scaled weights and bias); which ones, is read from a probe forward (conv_bn_pairs), never from
  names: a batch-norm before its convolution (pre-activation nets, DenseNets) stays;
- on CUDA: channels_last weights and inputs, and cuDNN's autotuner (`cudnn.benchmark`);
- precision "bf16": bf16 autocast, except the convolution that sees the pixels, which stays fp32: a PGD step
  moves a pixel by less than bf16's spacing near 1 (1/256), so a bf16 input would swallow it (on the trained
  digits pair this cut the gap to fp32's mean rep_dist_rel from 3.0% to 1.2%, tests/test_fast.py). Outputs come
  back as fp32, so losses, norms and the PGD step stay fp32;
- compile: torch.compile of the representation and the logits, with the batch dimension dynamic, so one
  compilation serves every batch size (the fan-out's last batch of a group is smaller). With a `cache`
  (robrep/compile_cache.py), the artifacts other workers published are loaded first and new ones published after
  the call that compiled them.
The original model stays the reference: result rows are measured with it, in fp32.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from robrep.compile_cache import CompileCache
from robrep.core.errors import ConfigError
from robrep.models import input_channels

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, key: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"{key}={precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device`'s type for precision "bf16"; nothing for "fp32". Without autocast's cache of cast
    weights: each region is one forward (every weight is cast once anyway), and a CUDA-graph capture of the PGD step
    (robrep.pgd) must not keep cast weights across replays (PyTorch's CUDA-graph notes: cache_enabled=False)."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """The model with requires_grad=False on every parameter, restored on exit (an attack on a model in training)."""
    wanted = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in wanted:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in wanted:
            p.requires_grad_(flag)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (batch-norm statistics frozen), its mode restored on exit."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class _Uses(TorchFunctionMode):
    """Counts, for each tensor in `watched` (by id), the torch calls that take it as an argument and return a
    tensor (reads of its metadata, as `dim()` or `shape`, are not uses)."""

    def __init__(self, watched: dict[int, tuple[str, torch.Tensor]]):
        super().__init__()
        self.watched, self.uses = watched, Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(o, torch.Tensor) for o in tree_flatten(out)[0]):
            for value in tree_flatten((args, kwargs or {}))[0]:
                if isinstance(value, torch.Tensor) and id(value) in self.watched:
                    self.uses[id(value)] += 1
        return out


def conv_bn_pairs(model: nn.Module, shape: tuple[int, ...] | None = None) -> list[tuple[str, str]]:
    """(conv, batch-norm) module names where the batch-norm's input is that convolution's output and nothing else
    reads or changes that output (one torch call takes it: the batch-norm's), each module run once, as found on a
    probe forward of shape (C, H, W) (default: the model's `probe_shape`, else 32 px). Only a plain BatchNorm2d
    qualifies (not a subclass with an activation, as timm's BatchNormAct2d). Left alone: a batch-norm of anything
    else (a block's input, a concatenation: pre-activation nets, DenseNets), and one of a convolution's output that
    a residual sum adds to in place or another layer also reads (RobustBench's PreAct ResNets)."""
    shape = shape or getattr(model, "probe_shape", None) or (input_channels(model), 32, 32)
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # conv outputs, kept alive so that no id is reused
    found: list[tuple[str, str, torch.Tensor]] = []
    calls: Counter = Counter()
    hooks = []
    for name, module in model.named_modules():
        if type(module) is nn.Conv2d:
            def after(m, i, out, name=name):
                calls[name] += 1
                outputs[id(out)] = (name, out)
            hooks.append(module.register_forward_hook(after))
        elif type(module) is nn.BatchNorm2d:
            def before(m, i, name=name):
                calls[name] += 1
                conv = outputs.get(id(i[0]))
                if conv is not None and conv[1] is i[0]:  # this very tensor came out of that convolution
                    found.append((conv[0], name, i[0]))
            hooks.append(module.register_forward_pre_hook(before))
    uses = _Uses(outputs)
    try:
        parameter = next(model.parameters())
        with torch.no_grad(), eval_mode(model), uses:
            model(torch.rand(1, *shape, dtype=parameter.dtype, device=parameter.device))
    finally:
        for hook in hooks:
            hook.remove()
    return [(conv, bn) for conv, bn, out in found if calls[conv] == 1 and calls[bn] == 1 and uses.uses[id(out)] == 1]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each batch-norm that normalises one convolution's output folded into that
    convolution (conv_bn_pairs). tests/unit/test_fast.py checks that the copy computes the same representation and
    logits for every architecture it builds."""
    folded = copy.deepcopy(model).eval()
    for conv, bn in conv_bn_pairs(folded):
        _replace(folded, conv, fuse_conv_bn_eval(folded.get_submodule(conv), folded.get_submodule(bn)))
        _replace(folded, bn, nn.Identity())
    return folded


class FullPrecision(nn.Module):
    """A layer that runs in fp32 under autocast."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.layer(x.float())


def _stem_in_fp32(model: nn.Module) -> None:
    """Wrap the convolution that sees the pixels (the first one on the model's input channels) in FullPrecision."""
    channels = input_channels(model)
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == channels:
                setattr(module, name, FullPrecision(child))
                return
    raise ValueError(f"{type(model).__name__} has no convolution on {channels} channels to keep in fp32")


class FastModel(nn.Module):
    """`model`'s representation and logits, frozen, folded, in `precision`, compiled or not (see the module doc).
    Inputs are [0,1] images on `device`; outputs are fp32."""

    def __init__(self, model: nn.Module, device: str | torch.device, precision: str = "fp32", compile: bool = False,
                 cache: CompileCache | None = None):
        super().__init__()
        check_precision(precision)
        on = torch.device(device)
        inner = fold_batchnorm(model).to(on)
        for p in inner.parameters():
            p.requires_grad_(False)
        if precision == "bf16":
            _stem_in_fp32(inner)
        if on.type == "cuda":
            inner = inner.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # cuDNN picks the fastest kernels for each shape, once
        self.inner, self.device_type, self.precision = inner, on.type, precision
        self.representation_dim = getattr(model, "representation_dim", None)
        self.compiled = compile
        self.capture = compile and on.type == "cuda"  # PGD over it replays each step as a CUDA graph (robrep.pgd)
        self.cache = cache if compile else None
        if self.cache is not None:
            self.cache.load()
        self._representation_fn = torch.compile(self._representation) if compile else self._representation
        self._logits_fn = torch.compile(self._logits) if compile else self._logits

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.device_type == "cuda" else x

    def _representation(self, x: torch.Tensor, fake_relu: bool) -> torch.Tensor:
        with autocast(self.device_type, self.precision):
            return self.inner.representation(self._layout(x), fake_relu=fake_relu).float()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device_type, self.precision):
            return self.inner(self._layout(x)).float()

    def _dynamic_batch(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        return x

    def representation(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        """x: (B, C, H, W) in [0,1] -> R(x): (B, D) fp32."""
        return self._published(self._representation_fn(self._dynamic_batch(x), fake_relu))

    def _published(self, out: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            self.cache.publish()  # a counter read, unless this call compiled something
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0,1] -> logits (B, K) fp32."""
        return self._published(self._logits_fn(self._dynamic_batch(x)))
