"""Projected gradient descent over the input: the one engine behind attacks, training and every
representation experiment. Every objective is a per-example loss (B,) that PGD *minimises*.

Cost: each step is one forward and one input-gradient backward, with no host work: random starts are drawn on
x0's device, the best iterate is kept with torch.where, and an early stop (stop_fn) is checked on the host only
every STOP_CHECK_EVERY steps (examples flagged done stop moving at once; the check only ends the loop). One extra
no-grad forward per restart measures the loss of the returned iterate. eps and step_size are in [0,1]-pixel
units, a scalar or (B,).

A step reads and writes fixed buffers alone (the iterate, the ball's center and radius, the best iterate and
loss, the active flags), so that on a CUDA device it can be captured once as a CUDA graph and replayed for the
other steps (capture=True): no Python, no kernel launches from the host between steps, one host sync per
STOP_CHECK_EVERY steps where there is an early stop and none otherwise. A loss given as an `Objective` (a plain
function of the model, x and named per-batch tensors) keeps its captured step per model and batch shape: a later
batch of that shape copies its values into the buffers and replays the same graph from its first step, so a short
attack (training's 7 steps) pays no capture per batch. A step that cannot be captured (a host sync or a host-side
random number inside the loss) runs eagerly after one logged line.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor], torch.Tensor]  # x (B, C, H, W) -> loss (B,)
StopFn = Callable[[], torch.Tensor]  # () -> done (B,) bool, judged on the iterate of the last loss_fn call
STOP_CHECK_EVERY = 8  # steps between the host syncs that end the loop once every example is done
GRAPH_WARMUP = 3  # eager steps on a side stream before a capture (cuDNN's autotuning, lazy initialisation)
GRAPHS_PER_MODEL = 8  # captured steps kept per model (one per batch shape and setting); the oldest goes first


@dataclass
class PGDResult:
    x: torch.Tensor  # (B, C, H, W) returned iterate (last or best), in [0,1]
    loss: torch.Tensor  # (B,) loss at x
    steps_taken: torch.Tensor  # (B,) int64: steps before the early stop (== steps when never stopped)


@dataclass(frozen=True, eq=False)
class Objective:
    """A loss x -> (B,) that names what it reads: fn(model, x, *tensors), fn a plain function of those alone (no
    other state, no host work). PGD with capture=True keeps its captured step per model and shapes and replays it
    for every later batch of the same shapes, the batch's tensors copied into the captured ones."""

    fn: Callable[..., torch.Tensor]
    model: nn.Module
    tensors: tuple[torch.Tensor, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, x, *self.tensors)


def _norm(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, 1, ..., 1) per-example L2 norm (at least 1e-12), broadcastable back; any memory layout."""
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True).clamp_min(1e-12)


class L2Step:
    """||x - center||_2 <= eps. Steps along the L2-normalised gradient: ||x_new - x|| = step_size."""

    @staticmethod
    def step(x: torch.Tensor, grad: torch.Tensor, step_size: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x, grad, step_size / _norm(grad), value=-1.0)  # one pass over the image

    @staticmethod
    def project(x: torch.Tensor, center: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        delta = x - center
        return torch.addcmul(center, delta, torch.clamp(eps / _norm(delta), max=1.0)).clamp_(0.0, 1.0)

    @staticmethod
    def random_start(center: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Uniform in the ball: direction ~ Gaussian, radius ~ eps * U^(1/d). Drawn on center's device."""
        noise = torch.randn(center.shape, generator=generator, dtype=center.dtype, device=center.device)
        u = torch.rand((center.shape[0],), generator=generator, dtype=center.dtype, device=center.device)
        radius = eps * u.pow(1.0 / center[0].numel()).view_as(eps)
        return (center + radius * noise / _norm(noise)).clamp(0.0, 1.0)


class LinfStep:
    """||x - center||_inf <= eps. Steps along the gradient's sign: every pixel moves by step_size."""

    @staticmethod
    def step(x: torch.Tensor, grad: torch.Tensor, step_size: torch.Tensor) -> torch.Tensor:
        return x - step_size * grad.sign()

    @staticmethod
    def project(x: torch.Tensor, center: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (center + torch.maximum(torch.minimum(x - center, eps), -eps)).clamp(0.0, 1.0)

    @staticmethod
    def random_start(center: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(center.shape, generator=generator, dtype=center.dtype, device=center.device)
        return (center + (2 * u - 1) * eps).clamp(0.0, 1.0)


class UnconstrainedStep:
    """Only [0,1] pixels. Steps like L2 (normalised gradient); eps only scales the random start."""

    step = staticmethod(L2Step.step)
    random_start = staticmethod(L2Step.random_start)

    @staticmethod
    def project(x: torch.Tensor, center: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0)


STEPS = {"l2": L2Step, "linf": LinfStep, "unconstrained": UnconstrainedStep}


def get_step(constraint: str):
    if constraint not in STEPS:
        raise ValueError(f"unknown constraint {constraint!r}; known: {sorted(STEPS)}")
    return STEPS[constraint]


def _as_column(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Scalar or (B,) -> (B, 1, 1, 1) on like's device and dtype. A Python number is filled in on the device
    (no host-to-device copy, which would sync)."""
    shape = (like.shape[0], *([1] * (like.dim() - 1)))
    if not isinstance(value, torch.Tensor):
        return torch.full(shape, float(value), dtype=like.dtype, device=like.device)
    return value.to(like.device, like.dtype).expand(like.shape[0]).reshape(shape)


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """A fallback is one logged line per process and reason, not one per batch."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


class _Graph:
    """`step` (no arguments, it works in fixed buffers) as a CUDA graph: the first GRAPH_WARMUP calls run it on a
    side stream, the next captures it and replays it, every later call replays it. When the capture fails, one
    logged line says why and every call runs `step` eagerly."""

    def __init__(self, step: Callable[[], None]):
        self.step, self.calls, self.graph = step, 0, None

    def __call__(self) -> None:
        self.calls += 1
        if self.graph is not None:
            return self.graph.replay() if self.graph else self.step()
        if self.calls <= GRAPH_WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step()
            torch.cuda.current_stream().wait_stream(side)
            return None
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):  # records the kernels; runs none of them
                self.step()
        except RuntimeError as e:
            warn_once(f"PGD: the step was not captured as a CUDA graph ({' '.join(str(e).split())}); it runs eagerly")
            self.graph = False
            return self.step()
        self.graph = graph
        return graph.replay()


class _Buffers:
    """The fixed buffers of a PGD run and its step, which reads and writes them alone (so it can be captured). It
    steps in the tensors it is given (start is updated in place; a kept one is given copies); load() puts a later
    run's start, center, radius, step size and (for an Objective) tensors in."""

    def __init__(self, loss_fn, start, center, eps, step_size, rule, keep_best: bool, stop_fn):
        batch, device = start.shape[0], start.device
        self.rule, self.keep_best, self.stop_fn = rule, keep_best, stop_fn
        self.x, self.center, self.eps, self.step_size = start, center, eps, step_size
        self.best_x = start.clone() if keep_best else start
        self.best_loss = torch.full((batch,), float("inf"), device=device)
        self.active = torch.ones(batch, dtype=torch.bool, device=device)
        self.steps_taken = torch.zeros(batch, dtype=torch.int64, device=device)
        if isinstance(loss_fn, Objective):  # the model by a weak reference: kept buffers must not keep it alive
            self.tensors = loss_fn.tensors
            self.fn, self.model, self.loss_fn = loss_fn.fn, weakref.ref(loss_fn.model), self._objective
        else:
            self.tensors, self.loss_fn = (), loss_fn
        self.run_step: Callable[[], None] = self.step

    def _objective(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model(), x, *self.tensors)

    def load(self, loss_fn, start, center, eps, step_size) -> None:
        for buffer, value in ((self.x, start), (self.center, center), (self.eps, eps), (self.step_size, step_size),
                              *zip(self.tensors, getattr(loss_fn, "tensors", ()), strict=True)):
            buffer.copy_(value)
        if self.keep_best:
            self.best_x.copy_(start)
        self.best_loss.fill_(float("inf"))
        self.active.fill_(True)
        self.steps_taken.zero_()

    def step(self) -> None:
        x, rule = self.x, self.rule
        z = x.detach().requires_grad_(True)
        loss = self.loss_fn(z)  # (B,)
        (grad,) = torch.autograd.grad(loss.sum(), z)
        with torch.no_grad():
            loss = loss.detach()
            if self.keep_best:
                better = loss < self.best_loss
                self.best_loss.copy_(torch.where(better, loss, self.best_loss))
                self.best_x.copy_(torch.where(better.view(-1, 1, 1, 1), x, self.best_x))
            if self.stop_fn is not None:
                self.active.logical_and_(~self.stop_fn())
            moved = rule.project(rule.step(x, grad, self.step_size), self.center, self.eps)
            x.copy_(moved if self.stop_fn is None else torch.where(self.active.view(-1, 1, 1, 1), moved, x))
            self.steps_taken.add_(self.active)


# model -> {key: _Buffers}: an Objective's captured steps live as long as its model, one per shape and setting.
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _kept_key(loss_fn: Objective, start, center, eps, step_size, rule, keep_best: bool) -> tuple:
    """Everything a captured step depends on besides the values in its buffers: the function, the shapes, dtypes,
    devices and memory layouts of every buffer, the model's mode, and autocast and grad mode."""
    device = start.device.type
    layouts = tuple((tuple(t.shape), t.dtype, t.device, t.stride()) for t in (start, center, eps, step_size,
                                                                             *loss_fn.tensors))
    autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
    return (loss_fn.fn, rule, keep_best, layouts, getattr(loss_fn.model, "training", None), autocast,
            torch.is_grad_enabled())


def _buffers(loss_fn, start, center, eps, step_size, rule, keep_best, stop_fn, capture) -> tuple[_Buffers, bool]:
    """The buffers (and the step, captured or not) a run steps in, and whether they are kept: an Objective's kept
    ones for these shapes, loaded with this run's values, when capturing without an early stop; else new ones."""
    keep = capture and stop_fn is None and isinstance(loss_fn, Objective)
    if keep:
        kept = _KEPT.setdefault(loss_fn.model, {})
        key = _kept_key(loss_fn, start, center, eps, step_size, rule, keep_best)
        if key in kept:
            kept[key].load(loss_fn, start, center, eps, step_size)
            return kept[key], True
        center, eps, step_size = center.clone(), eps.clone(), step_size.clone()  # start is the run's own already
        loss_fn = Objective(loss_fn.fn, loss_fn.model, tuple(t.clone() for t in loss_fn.tensors))
    buffers = _Buffers(loss_fn, start, center, eps, step_size, rule, keep_best, stop_fn)
    if capture and start.is_cuda:
        buffers.run_step = _Graph(buffers.step)
    elif capture:
        warn_once(f"PGD: capture asks for a CUDA device (the batch is on {start.device.type}); the steps run eagerly")
    if keep:
        if len(kept) >= GRAPHS_PER_MODEL:
            del kept[next(iter(kept))]
        kept[key] = buffers
    return buffers, keep


def _run(loss_fn, start, center, rule, eps, step_size, steps, keep_best, stop_fn, capture=False) -> PGDResult:
    """One PGD run from start. Examples flagged done by stop_fn freeze where they are. capture: replay the step as
    a CUDA graph (see the module doc); the result is then copied out of buffers a later run reuses."""
    b, kept = _buffers(loss_fn, start, center, eps, step_size, rule, keep_best, stop_fn, capture)
    for i in range(steps):
        b.run_step()
        if stop_fn is not None and i % STOP_CHECK_EVERY == STOP_CHECK_EVERY - 1 and not b.active.any():
            break
    x, steps_taken = (b.x.clone(), b.steps_taken.clone()) if kept else (b.x, b.steps_taken)
    with torch.no_grad():
        final_loss = b.loss_fn(x).detach()
    if keep_best:
        better = final_loss < b.best_loss
        return PGDResult(torch.where(better.view(-1, 1, 1, 1), x, b.best_x), torch.where(better, final_loss,
                                                                                           b.best_loss), steps_taken)
    return PGDResult(x, final_loss, steps_taken)


def pgd(
    loss_fn: LossFn,
    x0: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    step_size: float | torch.Tensor,
    steps: int,
    constraint: str = "l2",
    center: torch.Tensor | None = None,
    random_start: bool = False,
    restarts: int = 1,
    keep: str = "last",
    stop_fn: StopFn | None = None,
    generator: torch.Generator | None = None,
    capture: bool = False,
) -> PGDResult:
    """Minimise loss_fn from x0 within the `constraint` ball of radius eps around `center` (default x0).

    restarts > 1 reruns from fresh random starts (needs random_start) and keeps each example's lowest
    loss. keep="best" returns each example's best iterate seen, "last" the final one. stop_fn, called
    right after each loss_fn(x), flags examples that are done: they stop moving, and steps_taken says when.
    generator: on x0's device (random starts are drawn there); None uses that device's default generator.
    capture: on a CUDA device, each run's step is captured once as a CUDA graph and replayed (see the module doc).
    """
    rule = get_step(constraint)
    if keep not in ("last", "best"):
        raise ValueError(f"keep={keep!r}: use 'last' or 'best'")
    if restarts < 1 or (restarts > 1 and not random_start):
        raise ValueError("restarts must be >= 1, and restarts > 1 needs random_start=True")
    x0 = x0.detach()
    center = x0 if center is None else center.detach()
    eps_c, step_c = _as_column(eps, x0), _as_column(step_size, x0)
    best: PGDResult | None = None
    for _ in range(restarts):
        start = rule.random_start(center, eps_c, generator) if random_start else x0.clone()
        start = rule.project(start, center, eps_c)
        result = _run(loss_fn, start, center, rule, eps_c, step_c, steps, keep == "best", stop_fn, capture)
        if best is None:
            best = result
        else:
            better = result.loss < best.loss
            best = PGDResult(
                torch.where(better.view(-1, 1, 1, 1), result.x, best.x),
                torch.where(better, result.loss, best.loss),
                torch.where(better, result.steps_taken, best.steps_taken),
            )
    return best
