"""Benchmark: robrep's PGD engine against a raw torch.autograd.grad loop on the same model and batch.

    .venv/bin/python bench/pgd.py [--steps 20] [--seconds 30] [--calls 5]

Both run the same L2 attack step (normalised gradient, projection onto the eps-ball and [0,1]) on
(a) the small CNN at 16 px, batch 128 and (b) the CIFAR ResNet-18 at 32 px, batch 32. Each ratio is
engine image-steps/s over raw-loop image-steps/s (higher is better; 1.0 = no overhead) from each
side's fastest call, the two interleaved call by call, each side timed for at least --seconds and
--calls calls. The fastest call, because on this shared machine another tenant only ever adds time:
one call of the CIFAR ResNet-18 took 17.4-21.2 s (raw) and 17.6-22.4 s (engine) in four interleaved
pairs, so a ratio of totals swung from 0.82 to 1.12 pair by pair (2026-12-02); the ratio of totals is
printed too. The engine also measures the loss of its returned iterate: one extra no-grad forward per
call (0.42 s against ~18 s there, 2.3%). The last line is the lower of the two ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robrep.models import create_model  # noqa: E402
from robrep.objectives import untargeted_attack  # noqa: E402
from robrep.pgd import pgd  # noqa: E402


def raw_loop(loss_fn, x0, eps, step_size, steps):
    """The engine's L2 step and projection written inline, minimising loss_fn (x -> (B,)) from x0 (also
    bench/gpu.py's floor)."""
    x = x0.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x).sum(), x)
        with torch.no_grad():
            x = x - step_size * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = x - x0
            delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1)
            x = (x0 + delta).clamp(0, 1)
    return x


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name, batch, resolution, steps, seconds, min_calls) -> float:
    torch.manual_seed(0)
    model = create_model(name, 10, [0.3] * 3, [0.4] * 3).eval()
    x = torch.rand(batch, 3, resolution, resolution)
    y = torch.randint(0, 10, (batch,))
    engine = lambda: pgd(untargeted_attack(model, y), x, eps=0.5, step_size=0.1, steps=steps)  # noqa: E731
    raw = lambda: raw_loop(untargeted_attack(model, y), x, 0.5, 0.1, steps)  # noqa: E731
    engine(), raw()  # warm up
    raws, engines = [], []
    while len(raws) < min_calls or min(sum(raws), sum(engines)) < seconds:  # interleaved: noise hits both alike
        raws.append(timed(raw))
        engines.append(timed(engine))
    image_steps = batch * steps
    ratio = min(raws) / min(engines)
    print(f"{name} {resolution}px batch {batch} steps {steps}, {len(raws)} calls each ({sum(raws):.0f} s raw, "
          f"{sum(engines):.0f} s engine; calls {min(raws):.2f}-{max(raws):.2f} s raw, "
          f"{min(engines):.2f}-{max(engines):.2f} s engine): fastest calls: raw loop "
          f"{image_steps / min(raws):,.0f} image-steps/s, engine {image_steps / min(engines):,.0f} image-steps/s, "
          f"ratio {ratio:.3f} (ratio of totals {sum(raws) / sum(engines):.3f})")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per side, at least")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per side, at least")
    args = parser.parse_args()
    print(f"threads: {torch.get_num_threads()}")
    small = compare("small_cnn", 128, 16, args.steps, args.seconds, args.calls)
    cifar = compare("cifar_resnet18", 32, 32, args.steps, args.seconds, args.calls)
    print(f"ratio: {min(small, cifar):.3f}")


if __name__ == "__main__":
    main()
