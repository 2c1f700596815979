"""Benchmark: training throughput of one Ray Train worker against the same loop in a plain process, and
the cost of an adversarial epoch against a standard one.

    .venv/bin/python bench/train.py [--seconds 30] [--steps 7]

Data: the digits at 16 px (FFCV .beton), small CNN, batch 64, 2 threads in both cases. images/s counts
the training passes only (not evaluation), and skips the first epoch (FFCV compiles its pipeline then).
Each side trains for at least --seconds (an epoch lasts ~0.35 s: a few epochs made the ratio swing between
0.78 and 1.0): the plain process runs epochs until the time is spent, the Ray Train worker as many epochs.
The adversarial epoch runs an L2 PGD attack of `steps` steps per batch; theory says it costs
(steps + 1)x a standard epoch (each attack step ~ one forward + one input-gradient backward).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.specs import TrainSpec  # noqa: E402
from datasets.beton import make_loader, read_info, write_beton  # noqa: E402
from datasets.sources import digits  # noqa: E402
from robrep.models import create_model  # noqa: E402
from robrep.train import AttackSpec, train_step  # noqa: E402


def plain_epochs(path: Path, seconds: float, attack: AttackSpec | None) -> tuple[float, int]:
    """(images/s of the training loop in this process over the epochs after the first, epochs run): epochs run
    until `seconds` of them are measured."""
    torch.set_num_threads(2)
    info = read_info(path)
    torch.manual_seed(0)
    model = create_model("small_cnn", info["num_classes"], info["mean"], info["std"]).to(
        memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = make_loader(path, 64, train=True)
    first, seen_all, timed = True, 0, 0.0
    epochs = 0
    while timed < seconds:
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            train_step(model, optimizer, x, y, attack)
            seen += len(y)
        epochs += 1
        if not first:
            seen_all, timed = seen_all + seen, timed + time.perf_counter() - start
        first = False
    return seen_all / timed, epochs


def _cpu_seconds() -> dict[tuple[int, str], float]:
    """CPU seconds (user + system) so far of every process on this machine, by (pid, short name)."""
    import psutil

    seconds = {}
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        times, cmd = proc.info["cpu_times"], proc.info["cmdline"] or [proc.info["name"] or "?"]
        if times is None:
            continue
        name = next((part for part in cmd if part.startswith("ray::")), None) or Path(cmd[0]).name
        if name.startswith("python") and len(cmd) > 1:
            name = Path(cmd[1] if not cmd[1].startswith("-") else cmd[-1]).name
        seconds[proc.info["pid"], name[:40]] = times.user + times.system
    return seconds


def ray_epochs(path: Path, test: Path, epochs: int, tmp: Path) -> float:
    """images/s reported by one Ray Train worker running cluster/train.py's loop (epochs after the first). Prints
    where the machine's CPU went meanwhile, by process."""
    import ray

    from cluster.connect import connect
    from cluster.train import TrainRun, fit
    from robrep.store import read_table

    info = read_info(path)
    connect(None, num_cpus=2)
    before, start = _cpu_seconds(), time.perf_counter()
    spec = TrainSpec(model_id="bench", arch="small_cnn", epochs=epochs, batch_size=64, lr=0.05, weight_decay=0.0,
                     lr_milestones=(1000,), augment="none", padding=0, eval_every=1000, eval_max_images=1,
                     num_workers=1, cpus_per_worker=2)
    run = TrainRun(spec, info["num_classes"], tuple(info["mean"]), tuple(info["std"]), str(path), str(test),
                   str(tmp / "store"))
    fit(run, storage_path=str(tmp / "ray_train"))
    after, wall = _cpu_seconds(), time.perf_counter() - start
    used: dict[str, float] = {}
    for key, seconds in after.items():
        used[key[1]] = used.get(key[1], 0.0) + seconds - before.get(key, 0.0)
    print(f"CPU during the Ray Train run ({wall:.0f} s wall, start-up included), by process alive at its end:")
    for name, seconds in sorted(used.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {seconds:7.1f} s  {seconds / wall:5.1%} of a core  {name}")
    ray.shutdown()
    rates = read_table(tmp / "store", "train_metrics").sort_values("epoch")["images_per_s"].iloc[1:]
    return float(len(rates) / (1 / rates).sum())  # every epoch has the same images: total images / total seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0, help="measured training seconds per side, at least")
    parser.add_argument("--steps", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        train = write_beton(tmp / "train.beton", digits(16, "train"))
        test = write_beton(tmp / "test.beton", digits(16, "test"))
        standard, epochs = plain_epochs(train, args.seconds, None)
        adversarial, _ = plain_epochs(train, args.seconds / 3, AttackSpec(eps=2.0, steps=args.steps,
                                                                               step_size=0.35))
        in_ray = ray_epochs(train, test, epochs, tmp)
    print(f"plain process, standard: {standard:,.0f} images/s over {epochs - 1} epochs (and a warm-up epoch)")
    print(f"plain process, adversarial ({args.steps} steps): {adversarial:,.0f} images/s; cost "
          f"{standard / adversarial:.2f}x a standard epoch (theory: {args.steps + 1}x)")
    print(f"one Ray Train worker, standard: {in_ray:,.0f} images/s")
    print(f"ratio: {in_ray / standard:.3f}")


if __name__ == "__main__":
    main()
