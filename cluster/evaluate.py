"""Clean and adversarial accuracy of a checkpoint, sharded over Ray tasks (one GPU each, if asked)."""

from __future__ import annotations

import ray
import torch

from datasets.beton import read_indices
from datasets.stage import stage
from robrep.checkpoint import load_checkpoint
from robrep.compile_cache import shared
from robrep.fast import FastModel
from robrep.train import AttackSpec, evaluate, evaluate_independently


@ray.remote
def _evaluate_shard(checkpoint: str, data: str, source: str | None, indices: list[int], attack: AttackSpec | None,
                    batch_size: int, precision: str, compile: bool, apgd_steps: int, compile_cache: str) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = load_checkpoint(checkpoint, map_location=device)
    images, labels = read_indices(stage(data, source), indices)
    batches = ((images[i : i + batch_size].to(device), labels[i : i + batch_size].to(device))
               for i in range(0, len(indices), batch_size))
    fast = FastModel(model, device, precision, compile, shared(compile_cache, device, compile))
    if attack is not None and apgd_steps:
        return evaluate_independently(model, batches, attack, apgd_steps, attack_model=fast, capture=fast.capture)
    return evaluate(model, batches, attack, attack_model=fast, capture=fast.capture)


def evaluate_checkpoint(
    checkpoint: str, data: str, source: str | None, num_images: int, attack: AttackSpec | None, *, shards: int,
    gpus_per_shard: float, cpus_per_shard: float, batch_size: int, precision: str = "fp32", compile: bool = False,
    apgd_steps: int = 0, compile_cache: str = "",
) -> dict:
    """{"n", "clean_acc", "adv_acc"} over the first `num_images` images of `data` (a .beton on each node, staged from
    `source` where given), in `shards` Ray tasks; the attack in `precision`, compiled or not (robrep/fast.py). With
    apgd_steps > 0, APGD-CE and APGD-DLR check our attack too (robrep.train.evaluate_independently): then "pgd_acc",
    "apgd_ce_acc", "apgd_dlr_acc", and "adv_acc" is the accuracy under all of them. compile_cache: the store whose
    compile_cache/ the compiled shards share (robrep/compile_cache.py)."""
    bounds = [round(num_images * s / shards) for s in range(shards + 1)]
    refs = [
        _evaluate_shard.options(num_gpus=gpus_per_shard, num_cpus=cpus_per_shard).remote(
            checkpoint, data, source, list(range(lo, hi)), attack, batch_size, precision, compile, apgd_steps,
            compile_cache)
        for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo
    ]
    parts = ray.get(refs)
    n = sum(p["n"] for p in parts)
    return {"n": n, **{key: sum(p[key] * p["n"] for p in parts) / n for key in parts[0] if key.endswith("_acc")}}
