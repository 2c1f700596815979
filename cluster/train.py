"""Ray Train V2 wiring: a TorchTrainer whose workers read FFCV shards and run robrep's training steps.

Every `checkpoint_every` epochs (and the last) end in a checkpoint (model, optimizer, scheduler, epoch, RNG)
reported by rank 0, so a rerun with the same name, or a worker group restarted after a failure, continues after
it, replaying the same (seeded) epochs.
Rank 0 also commits one `train_metrics` row per epoch to the store (a rerun of an epoch replaces it), from
whatever node it runs on: the store must be a location every node reaches (a URI or a shared folder).
Checkpoints go to `storage_path`, a URI or a shared folder, through Ray Train's storage filesystem.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, get_device, prepare_model

from cluster.specs import TrainSpec
from cluster.storage import storage_options
from datasets.beton import make_loader, read_info
from datasets.stage import stage
from robrep.augment import SEEDED, augment, epoch_generator
from robrep.compile_cache import shared
from robrep.core.location import join, write_bytes
from robrep.models import create_model
from robrep.store.commit import append_rows
from robrep.store.schema import TRAIN_METRICS_SCHEMA, now_utc, to_table
from robrep.train import (
    AttackSpec,
    count_correct,
    make_optimizer,
    make_scheduler,
    step_per_batch,
    train_step,
)

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class TrainRun:
    """Everything a Ray Train worker needs: the model's spec and where its data, store and audit live."""

    spec: TrainSpec
    num_classes: int
    mean: tuple[float, ...]  # per-channel normalisation, from the dataset's sidecar
    std: tuple[float, ...]
    train_path: str  # the .beton on each node
    test_path: str
    store: str
    audit_dir: str | None = None  # a path or URI
    train_source: str | None = None  # where each node stages train_path from (data.stage_from)
    test_source: str | None = None

    @property
    def threads(self) -> int:
        return max(1, int(self.spec.cpus_per_worker))


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
    if "cuda_rng" in state and torch.cuda.is_available():  # the attacks' random starts are drawn on the GPU
        torch.cuda.set_rng_state(state["cuda_rng"])
    return int(state["epoch"]) + 1


def _all_reduce(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _sync_buffers(model) -> None:
    """Give every rank rank 0's BatchNorm statistics. DDP broadcasts buffers at the start of each forward,
    so after the epoch's last forward each rank holds its own; evaluation and checkpoints need one set."""
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def test_shard(num_images: int, rank: int, world: int) -> list[int]:
    """The test images rank `rank` evaluates: every world-th, from its rank. The shards are disjoint and cover the
    test set exactly once, whatever its size (a DistributedSampler pads them to equal length by repeating images,
    so a few would count twice)."""
    return list(range(rank, num_images, world))


def _on_device(loader, device, max_images: int | None, seen_labels: list | None = None):
    """The loader's batches on `device` (none without a loader), stopping once max_images (if any) have been given;
    their labels are appended to seen_labels where given (the audit)."""
    seen = 0
    for x, y in loader or ():
        if seen_labels is not None:
            seen_labels.append(y.cpu().clone())
        yield x.to(device), y.to(device)
        seen += len(y)
        if max_images is not None and seen >= max_images:
            return


def _evaluate(model, loader, attack: AttackSpec | None, device, max_images: int | None, attack_model, precision: str,
              capture: bool, seen_labels: list | None = None) -> tuple[float, float]:
    """Clean and adversarial accuracy over this rank's shard (test_shard), summed over ranks; the attack runs on
    attack_model in the training's precision."""
    counts = count_correct(model, _on_device(loader, device, max_images, seen_labels), attack, attack_model, precision,
                           capture)
    n, clean, adv = _all_reduce(list(counts), device)
    return clean / max(n, 1), (adv / max(n, 1) if attack is not None else float("nan"))


def _audit(folder: str | None, rank: int, epoch: int, labels: list[torch.Tensor], model,
           eval_labels: list[torch.Tensor]) -> None:
    """For tests and forensics: the labels this rank trained on and evaluated, its pid and a hash of its weights."""
    if folder is None:
        return
    digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for v in model.state_dict().values()))
    record = {"labels": torch.cat(labels) if labels else torch.empty(0), "pid": os.getpid(),
              "eval_labels": torch.cat(eval_labels) if eval_labels else torch.empty(0, dtype=torch.long),
              "node_id": ray.get_runtime_context().get_node_id(), "weights_sha256": digest.hexdigest()}
    buffer = io.BytesIO()
    torch.save(record, buffer)
    write_bytes(join(folder, f"rank{rank}_epoch{epoch}_pid{os.getpid()}.pt"), buffer.getvalue())


def train_loop_per_worker(run: TrainRun) -> None:
    """Runs on every Ray Train worker: one epoch of standard or adversarial steps, evaluation, a checkpoint."""
    spec = run.spec
    torch.set_num_threads(run.threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = get_device()
    torch.manual_seed(spec.rng_seed)
    model = create_model(spec.arch, run.num_classes, run.mean, run.std, **spec.arch_kwargs)
    model = model.to(memory_format=torch.channels_last)
    ddp_model = prepare_model(model)  # moves to `device`; DDP over gloo (CPU) or NCCL (GPU)
    # compiled artifacts are shared through the store with every other worker and node (robrep/compile_cache.py)
    compile_cache = shared(run.store, device, spec.compile)
    if compile_cache is not None:
        compile_cache.load()
    # compile: one graph for the DDP training step and one for the attack (the unwrapped module, eval mode, frozen)
    step_model = torch.compile(ddp_model) if spec.compile else ddp_model
    attack_model = torch.compile(model) if spec.compile else model
    capture = spec.compile and torch.device(device).type == "cuda"  # the attack's steps as a CUDA graph (robrep.pgd)
    train_path, test_path = stage(run.train_path, run.train_source), stage(run.test_path, run.test_source)
    # Translation and flips are drawn here from a seeded generator (robrep/augment.py), not by FFCV's unseeded ones.
    augment_kind = spec.augment or read_info(train_path).get("augment", "none")
    seeded = augment_kind in SEEDED
    # Built after Ray set up the process group, so distributed=True gives each rank a disjoint shard.
    loader = make_loader(train_path, spec.batch_size // world, train=True, distributed=world > 1,
                         rng_seed=spec.rng_seed, augment="none" if seeded else augment_kind, padding=spec.padding)
    steps_per_epoch = len(loader)
    optimizer = make_optimizer(spec, model.parameters())
    scheduler = make_scheduler(optimizer, spec, steps_per_epoch)
    start_epoch = _restore(model, optimizer, scheduler)
    shard = test_shard(read_info(test_path)["num_images"], rank, world)
    test_loader = (make_loader(test_path, max(1, spec.batch_size // world), train=False, indices=shard)
                   if shard else None)  # more workers than test images: some evaluate none
    for epoch in range(start_epoch, spec.epochs):
        loader.next_epoch = epoch  # the shuffle of epoch e is seeded by (rng_seed, e), so a resume replays it
        model.train()
        start, seen, batches, labels = time.time(), 0, 0, []
        correct, loss_sum = torch.zeros((), device=device), torch.zeros((), device=device)  # summed on the device
        generator = epoch_generator(spec.rng_seed, epoch, rank)
        for i, (x, y) in enumerate(loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if seeded:
                x = augment(x, augment_kind, spec.padding, generator)
            attack = spec.attack_at(epoch * steps_per_epoch + i, spec.epochs * steps_per_epoch)
            loss, hits = train_step(step_model, optimizer, x, y, attack, attack_model=attack_model,
                                    label_smoothing=spec.label_smoothing, precision=spec.precision, capture=capture)
            if step_per_batch(spec):
                scheduler.step()
            seen, batches, correct, loss_sum = seen + len(y), batches + 1, correct + hits, loss_sum + loss
            if run.audit_dir:
                labels.append(y.cpu().clone())
        correct, loss_sum = int(correct), float(loss_sum)
        if compile_cache is not None:
            compile_cache.publish()  # after the epoch that compiled the step and the attack
        _sync_buffers(model)
        lr = optimizer.param_groups[0]["lr"]
        if not step_per_batch(spec):
            scheduler.step()
        train_seconds = time.time() - start
        seen_all, correct_all, loss_all = _all_reduce([seen, correct, loss_sum / max(batches, 1)], device)
        last = epoch + 1 == spec.epochs  # the last epoch is evaluated on the whole test set
        evaluate_now = (epoch + 1) % spec.eval_every == 0 or last
        cap = None if last or spec.eval_max_images is None else max(1, spec.eval_max_images // world)
        eval_labels = [] if run.audit_dir else None
        clean_acc, adv_acc = (_evaluate(model, test_loader, spec.eval_attack, device, cap, attack_model, spec.precision,
                                        capture, eval_labels) if evaluate_now else (float("nan"), float("nan")))
        metrics = {
            "model_id": spec.model_id, "epoch": epoch, "loss": loss_all / world, "train_acc": correct_all / seen_all,
            "clean_acc": clean_acc, "adv_acc": adv_acc, "lr": lr, "images_per_s": seen_all / train_seconds,
            "seconds": time.time() - start, "world_size": world, "created_at": now_utc(),
        }
        _audit(run.audit_dir, rank, epoch, labels, model, eval_labels or [])
        if rank == 0:
            append_rows(run.store, "train_metrics", to_table([metrics], TRAIN_METRICS_SCHEMA),
                        key=f"{spec.model_id}/{epoch}")
        # Ray Train gets a report only with a checkpoint (every rank, the same epochs): each report waits for its
        # controller's next poll (up to 2 s: RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), longer than a small model's epoch.
        # The epoch's metrics are in the store already.
        if not ((epoch + 1) % spec.checkpoint_every == 0 or last):
            continue
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                state = {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": torch.get_rng_state(),
                    **({"cuda_rng": torch.cuda.get_rng_state()} if device.type == "cuda" else {}),
                }
                torch.save(state, Path(folder) / STATE_FILE)
                checkpoint = Checkpoint.from_directory(folder)
            ray.train.report({k: v for k, v in metrics.items() if k != "created_at"}, checkpoint=checkpoint)


def fit(run: TrainRun, *, storage_path: str) -> dict:
    """Train `run.spec` to completion with Ray Train (resuming a run of the same model_id under storage_path, a
    shared folder or a URI); return the state of the latest checkpoint (model, optimizer, epoch, ...)."""
    spec = run.spec
    resources = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if spec.use_gpu else {})}
    trainer = TorchTrainer(
        functools.partial(train_loop_per_worker, run),  # the typed run crosses Ray intact; no config dict
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers, use_gpu=spec.use_gpu, resources_per_worker=resources,
            placement_strategy=spec.placement_strategy,
        ),
        run_config=RunConfig(
            name=spec.model_id,
            **storage_options(storage_path),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {spec.model_id!r} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:  # a local folder, downloaded if the checkpoint is remote
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
