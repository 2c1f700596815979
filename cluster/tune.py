"""Ray Tune wiring: trials of PGD settings on a fixed sample of images, stopped early by ASHA, and the
held-out comparison of the best settings with the defaults, as Ray tasks on the cluster.

A run is named by what it tunes, so a rerun of an interrupted (stopped, crashed) run restores it from
its experiment folder under storage_path and goes on with the unfinished trials (and retries the
failed ones) instead of starting over. A failed trial does not end the run."""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from cluster.storage import storage_options
from datasets.beton import read_indices
from datasets.stage import stage
from robrep.checkpoint import load_checkpoint
from robrep.compile_cache import shared
from robrep.core.errors import robrep_cause
from robrep.core.faults import fault_point
from robrep.core.location import join
from robrep.experiments import tuning_problem
from robrep.fast import FastModel
from robrep.pgd import pgd


@dataclass(frozen=True)
class TuneProblem:
    """What every trial shares: the model, the images, the objective and the fixed PGD settings."""

    checkpoint: str
    data: str  # a .beton on each node
    data_source: str | None  # where each node stages it from (data.stage_from)
    indices: tuple[int, ...]
    objective: str  # inversion | attack (robrep.experiments.tuning_problem)
    constraint: str
    eps: float
    report_every: int  # steps between reports: the unit ASHA compares trials in
    precision: str = "fp32"  # of the trials' PGD (robrep/fast.py)
    compile: bool = False
    compile_cache: str = ""  # the store whose compile_cache/ the trials share (robrep/compile_cache.py)


def _problem(problem: TuneProblem):
    """(loss_fn, x0, measure, capture: replay PGD's steps as a CUDA graph), on the trial's GPU where it has one."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = load_checkpoint(problem.checkpoint, map_location=device)
    images, labels = read_indices(stage(problem.data, problem.data_source), list(problem.indices))
    fast = FastModel(model, device, problem.precision, problem.compile,
                     shared(problem.compile_cache, device, problem.compile))
    return (*tuning_problem(model, images.to(device), labels.to(device), problem.objective, fast=fast), fast.capture)


def trainable(params: dict, problem: TuneProblem) -> None:
    """One trial: PGD with (params["step_size"], params["steps"]), reporting the objective every report_every."""
    torch.set_num_threads(1)
    start = time.time()
    fault_point("tune.trial")  # tests kill a trial here (ROBREP_FAULT): the run must go on without it
    loss_fn, x0, measure, capture = _problem(problem)
    x, done, steps = x0, 0, params["steps"]
    while done < steps:
        chunk = min(problem.report_every, steps - done)
        x = pgd(loss_fn, x, center=x0, eps=problem.eps, step_size=params["step_size"], steps=chunk,
                constraint=problem.constraint, capture=capture).x
        done += chunk
        tune.report({"metric": measure(x), "steps_done": done, "seconds": time.time() - start})


@ray.remote
def score(problem: TuneProblem, step_size: float, steps: int) -> float:
    """The objective for (step_size, steps) in one run of `steps` (no early stop), e.g. on held-out images."""
    torch.set_num_threads(1)
    loss_fn, x0, measure, capture = _problem(problem)
    return measure(pgd(loss_fn, x0, eps=problem.eps, step_size=step_size, steps=steps, constraint=problem.constraint,
                       capture=capture).x)


def score_remote(problem: TuneProblem, step_size: float, steps: int, resources: dict):
    """`score` as a Ray task with the trials' resources (a GPU when they take one)."""
    return score.options(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0)).remote(
        problem, step_size, steps)


def run_tune(problem: TuneProblem, *, step_size: tuple[float, float], steps: list[int], default: dict,
             num_samples: int, max_concurrent: int, storage_path: str, name: str, resources: dict,
             max_failures: int) -> tuple[list[dict], list[str], bool]:
    """Run the search, or restore an interrupted run of the same name and finish it. Returns (one dict per
    finished trial: step_size, steps, metric (last report), steps_done, seconds; the failed trials' errors (a robrep
    error a trial raised as itself, not Ray's copy);
    whether the run was restored)."""
    param_space = {"step_size": tune.loguniform(*step_size), "steps": tune.choice(steps)}
    scheduler = ASHAScheduler(time_attr="steps_done", max_t=max(steps), grace_period=problem.report_every,
                              reduction_factor=2)
    trial = tune.with_resources(tune.with_parameters(trainable, problem=problem), resources)
    storage = storage_options(storage_path)
    folder = join(storage["storage_path"], name)
    restored = tune.Tuner.can_restore(folder, storage_filesystem=storage.get("storage_filesystem"))
    if restored:
        tuner = tune.Tuner.restore(folder, trial, resume_unfinished=True, restart_errored=True,
                                   param_space=param_space, storage_filesystem=storage.get("storage_filesystem"))
    else:
        tuner = tune.Tuner(
            trial,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric="metric", mode="min", scheduler=scheduler, num_samples=num_samples,
                                        max_concurrent_trials=max_concurrent,
                                        search_alg=tune.search.BasicVariantGenerator(points_to_evaluate=[default])),
            run_config=tune.RunConfig(name=name, verbose=0, failure_config=tune.FailureConfig(max_failures),
                                      **storage),
        )
    results = tuner.fit()
    trials, failed = [], []
    for result in results:
        if result.error is not None or "metric" not in (result.metrics or {}):
            failed.append(robrep_cause(result.error) or result.error or RuntimeError("it reported no metric"))
            continue
        trials.append({"trial_id": result.metrics.get("trial_id"), "step_size": result.config["step_size"],
                       "steps": result.config["steps"], "metric": result.metrics["metric"],
                       "steps_done": result.metrics["steps_done"], "seconds": result.metrics["seconds"]})
    return trials, failed, restored
