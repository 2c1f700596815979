"""Ray Tune wiring: trials of PGD settings on a fixed sample of images, stopped early by ASHA, and the
held-out comparison of the best settings with the defaults, as Ray tasks."""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from datasets.beton import read_indices
from robrep.checkpoint import load_checkpoint
from robrep.experiments import tuning_problem
from robrep.pgd import pgd


@dataclass(frozen=True)
class TuneProblem:
    """What every trial shares: the model, the images, the objective and the fixed PGD settings."""

    checkpoint: str
    data: str  # a .beton
    indices: tuple[int, ...]
    objective: str  # inversion | attack (robrep.experiments.tuning_problem)
    constraint: str
    eps: float
    report_every: int  # steps between reports: the unit ASHA compares trials in


def _problem(problem: TuneProblem):
    model, _ = load_checkpoint(problem.checkpoint)
    images, labels = read_indices(problem.data, list(problem.indices))
    return tuning_problem(model, images, labels, problem.objective)


def trainable(params: dict, problem: TuneProblem) -> None:
    """One trial: PGD with (params["step_size"], params["steps"]), reporting the objective every report_every."""
    torch.set_num_threads(1)
    start = time.time()
    loss_fn, x0, measure = _problem(problem)
    x, done, steps = x0, 0, params["steps"]
    while done < steps:
        chunk = min(problem.report_every, steps - done)
        x = pgd(loss_fn, x, center=x0, eps=problem.eps, step_size=params["step_size"], steps=chunk,
                constraint=problem.constraint).x
        done += chunk
        tune.report({"metric": measure(x), "steps_done": done, "seconds": time.time() - start})


@ray.remote(num_cpus=1)
def score(problem: TuneProblem, step_size: float, steps: int) -> float:
    """The objective for (step_size, steps) in one run of `steps` (no early stop), e.g. on held-out images."""
    torch.set_num_threads(1)
    loss_fn, x0, measure = _problem(problem)
    return measure(pgd(loss_fn, x0, eps=problem.eps, step_size=step_size, steps=steps, constraint=problem.constraint).x)


def run_tune(problem: TuneProblem, *, step_size: tuple[float, float], steps: list[int], default: dict,
             num_samples: int, max_concurrent: int, storage_path: str, name: str) -> list[dict]:
    """Run the search; returns one dict per trial: step_size, steps, metric (last report), steps_done, seconds."""
    param_space = {"step_size": tune.loguniform(*step_size), "steps": tune.choice(steps)}
    scheduler = ASHAScheduler(time_attr="steps_done", max_t=max(steps), grace_period=problem.report_every,
                              reduction_factor=2)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, problem=problem), {"cpu": 1}),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="metric", mode="min", scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent,
                                    search_alg=tune.search.BasicVariantGenerator(points_to_evaluate=[default])),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0),
    )
    results = tuner.fit()
    trials = []
    for result in results:
        if result.error is not None:
            raise RuntimeError(f"a tuning trial failed: {result.error}")
        trials.append({"trial_id": result.metrics.get("trial_id"), "step_size": result.config["step_size"],
                       "steps": result.config["steps"], "metric": result.metrics["metric"],
                       "steps_done": result.metrics["steps_done"], "seconds": result.metrics["seconds"]})
    return trials
