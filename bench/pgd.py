"""Benchmark: robrep's PGD engine against a raw torch.autograd.grad loop on the same model and batch.

    .venv/bin/python bench/pgd.py [--batch 128] [--steps 50] [--repeats 5]

Both run the same L2 inversion (Eq. 4) on the digits small CNN at 16 px; the ratio is
engine image-steps/s over raw-loop image-steps/s (higher is better; 1.0 = no overhead). The engine
also measures the loss of its returned iterate: one extra no-grad forward per call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robrep.models import create_model  # noqa: E402
from robrep.objectives import inversion_loss  # noqa: E402
from robrep.pgd import pgd  # noqa: E402


def raw_loop(model, x0, target_rep, eps, step_size, steps):
    """The same math written inline: normalised L2 step, projection onto the eps-ball and [0,1]."""
    x = x0.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = inversion_loss(model.representation(x), target_rep)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            x = x - step_size * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = x - x0
            delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1)
            x = (x0 + delta).clamp(0, 1)
    return x


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, [0.3] * 3, [0.4] * 3).eval()
    x0 = torch.rand(args.batch, 3, args.resolution, args.resolution)
    with torch.no_grad():
        target_rep = model.representation(torch.rand_like(x0))
    loss_fn = lambda x: inversion_loss(model.representation(x), target_rep)  # noqa: E731
    engine = lambda: pgd(loss_fn, x0, eps=1000.0, step_size=0.1, steps=args.steps)  # noqa: E731
    raw = lambda: raw_loop(model, x0, target_rep, 1000.0, 0.1, args.steps)  # noqa: E731
    engine(), raw()  # warm up
    t_raw, t_engine = timed(raw, args.repeats), timed(engine, args.repeats)
    image_steps = args.batch * args.steps
    print(f"threads: {torch.get_num_threads()}, batch {args.batch}, steps {args.steps}, {args.resolution}px")
    print(f"raw autograd.grad loop: {image_steps / t_raw:,.0f} image-steps/s ({t_raw:.3f}s)")
    print(f"robrep pgd engine:      {image_steps / t_engine:,.0f} image-steps/s ({t_engine:.3f}s)")
    print(f"ratio: {t_raw / t_engine:.3f}")


if __name__ == "__main__":
    main()
