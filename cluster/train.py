"""Ray Train V2 wiring: a TorchTrainer whose workers read FFCV shards and run robrep's training steps.

Each epoch ends in a checkpoint (model, optimizer, scheduler, epoch, RNG) reported by rank 0, so a
rerun with the same name, or a restarted worker group, continues at the next epoch.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model

from datasets.beton import make_loader
from robrep.models import create_model
from robrep.train import AttackSpec, train_step

STATE_FILE = "state.pt"


def _restore(model, optimizer, scheduler) -> int:
    """Load the latest reported checkpoint, if any; return the epoch to start at."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]) + 1


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker. `config` holds plain values only (see `fit`)."""
    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"])
    model = create_model(config["arch"], config["num_classes"], config["mean"], config["std"], width=config["width"])
    model = model.to(memory_format=torch.channels_last)
    ddp_model = prepare_model(model)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config["lr_milestones"]), config["lr_gamma"])
    start_epoch = _restore(model, optimizer, scheduler)
    # Built after Ray set up the process group, so distributed=True gives each rank a disjoint shard.
    loader = make_loader(
        config["train_path"], config["batch_size"] // world, train=True, distributed=world > 1,
        seed=config["seed"], augment=config["augment"], padding=config["padding"],
    )
    attack = AttackSpec(**config["attack"]) if config["attack"] else None
    for epoch in range(start_epoch, config["epochs"]):
        loader.next_epoch = epoch  # the shuffle of epoch e is seeded by (seed, e), so a resume replays it
        start, seen, correct, loss_sum, batches = time.time(), 0, 0, 0.0, 0
        for x, y in loader:
            loss, hits = train_step(ddp_model, optimizer, x, y, attack, attack_model=model)
            seen, correct, loss_sum, batches = seen + len(y), correct + hits, loss_sum + loss, batches + 1
        scheduler.step()
        seconds = time.time() - start
        metrics = {
            "epoch": epoch, "rank": rank, "loss": loss_sum / max(batches, 1), "train_acc": correct / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"], "seconds": seconds, "images_per_s": seen * world / seconds,
        }
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                state = {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": torch.get_rng_state(),
                }
                torch.save(state, Path(folder) / STATE_FILE)
                checkpoint = Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


def fit(
    loop_config: dict,
    *,
    name: str,
    storage_path: str,
    num_workers: int,
    use_gpu: bool,
    resources_per_worker: dict | None,
    placement_strategy: str,
    max_failures: int,
) -> Path:
    """Run the trainer to completion; return the folder of the latest checkpoint (holding STATE_FILE)."""
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources_per_worker,
            placement_strategy=placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name!r} finished without a checkpoint")
    return Path(result.checkpoint.path)
