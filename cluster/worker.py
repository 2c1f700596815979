"""The worker side of the fan-out: what a pool actor does with a batch of jobs. It picks the device, keeps
models (the fp32 reference and its FastModel for the PGD loops) and datasets loaded across batches (its cache),
runs the batch's kind, and stamps the rows."""

from __future__ import annotations

import platform
import time

import torch

from datasets.beton import read_all, read_indices, read_info
from datasets.stage import stage
from robrep.checkpoint import load_checkpoint
from robrep.compile_cache import shared
from robrep.core.faults import failure_point
from robrep.fanout.job import BatchContext, Job
from robrep.fanout.registry import get_kind
from robrep.fast import FastModel

IN_MEMORY_BYTES = 512 * 2**20  # a split smaller than this (as float32) is read once and kept in memory


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _model(cache: dict, checkpoint: str, on: str) -> torch.nn.Module:
    if checkpoint not in cache:
        cache[checkpoint] = load_checkpoint(checkpoint, map_location=on)[0]
    return cache[checkpoint]


def _fast(cache: dict, job: Job, on: str) -> FastModel:
    """The job's model for the PGD loop in its precision, compiled once per actor where asked."""
    key = ("fast", job.checkpoint, job.precision, job.compile)
    if key not in cache:
        cache[key] = FastModel(_model(cache, job.checkpoint, on), on, job.precision, job.compile,
                               shared(job.compile_cache, on, job.compile))
    return cache[key]


def _split(cache: dict, path: str, source: str | None):
    """(size, get_images) for a .beton (staged to this node from `source` first, where given); small splits are
    decoded once and served from memory."""
    if path not in cache:
        stage(path, source)
        info = read_info(path)
        small = info["num_images"] * 3 * info["resolution"] ** 2 * 4 < IN_MEMORY_BYTES
        cache[path] = (info["num_images"], read_all(path) if small else None)
    size, everything = cache[path]

    def get_images(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if everything is not None:
            return everything[0][indices], everything[1][indices]
        return read_indices(path, indices)

    return size, get_images


def judge(rows: list[dict], model: torch.nn.Module, on: str) -> None:
    """The judge's label of each row's stored image (the 8-bit PNG a user sees), in judge_pred."""
    import numpy as np

    from robrep.images import decode_png
    from robrep.models import input_channels

    images = torch.from_numpy(np.stack([decode_png(row["image_png"]) for row in rows])).permute(0, 3, 1, 2)
    images = images[:, : input_channels(model)]  # a grey model sees one channel (a grey PNG decodes to 3)
    with torch.no_grad():
        preds = model(images.to(on).float() / 255).argmax(1).tolist()
    for row, pred in zip(rows, preds, strict=True):
        row["judge_pred"] = pred


def run_batch(jobs: list[Job], cache: dict) -> list[dict]:
    """One batch of compatible jobs (one kind, one model, one PGD setting) -> rows of the kind's table."""
    first, on = jobs[0], device()
    failure_point("worker.batch", first.model_id)  # tests make one model's batches fail here (ROBREP_FAIL)
    size, get_images = _split(cache, first.dataset_path, first.dataset_source)
    ctx = BatchContext(_model(cache, first.checkpoint, on), _fast(cache, first, on), on, get_images, size, cache,
                       (first.checkpoint, first.dataset_path))
    start = time.time()
    kind = get_kind(first.kind)
    rows = kind.run(ctx, jobs)
    seconds = (time.time() - start) / max(1, len(rows))
    if kind.table == "results":
        for row in rows:
            row.update(node=platform.node(), device=on, seconds=seconds, judge_pred=-1)
        if first.judge_checkpoint and rows:
            judge(rows, _model(cache, first.judge_checkpoint, on), on)
    return rows
