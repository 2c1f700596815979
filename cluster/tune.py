"""Ray Tune wiring: trials of PGD settings on a fixed sample of images, stopped early by ASHA."""

from __future__ import annotations

import time

import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from datasets.beton import read_indices
from robrep.checkpoint import load_checkpoint
from robrep.experiments import tuning_problem
from robrep.pgd import pgd


def trainable(config: dict) -> None:
    """One trial: PGD with (step_size, steps), reporting the objective every `report_every` steps."""
    torch.set_num_threads(1)
    start = time.time()
    model, _ = load_checkpoint(config["checkpoint"])
    images, labels = read_indices(config["data"], config["indices"])
    loss_fn, x0, measure = tuning_problem(model, images, labels, config["objective"])
    x, done = x0, 0
    while done < config["steps"]:
        chunk = min(config["report_every"], config["steps"] - done)
        x = pgd(loss_fn, x, center=x0, eps=config["eps"], step_size=config["step_size"], steps=chunk,
                constraint=config["constraint"]).x
        done += chunk
        tune.report({"metric": measure(x), "steps_done": done, "seconds": time.time() - start})


def run_tune(fixed: dict, *, step_size: tuple[float, float], steps: list[int], default: dict, num_samples: int,
             max_concurrent: int, storage_path: str, name: str) -> list[dict]:
    """Run the search; returns one dict per trial: step_size, steps, metric (last report), steps_done, seconds."""
    param_space = {**fixed, "step_size": tune.loguniform(*step_size), "steps": tune.choice(steps)}
    scheduler = ASHAScheduler(time_attr="steps_done", max_t=max(steps), grace_period=fixed["report_every"],
                              reduction_factor=2)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
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
