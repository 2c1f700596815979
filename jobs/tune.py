"""Tune PGD's step_size and steps with Ray Tune (ASHA), record every trial, write the best settings.

    ray job submit --working-dir . -- python -m jobs.tune --config jobs/configs/digits.yaml
    python -m jobs.fanout --config jobs/configs/digits.yaml --from-tune runs/digits/tune_best.yaml

The best settings are compared with the config's defaults on held-out images before they are written.
A run is named by its tune section, model and data: rerunning a stopped run resumes it (Tuner.restore),
retrying its failed trials; a trial that fails is left out, and the run goes on with the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import yaml

from jobs.common import check_resources, git_sha, run_entry_point
from jobs.config import ExperimentConfig
from robrep.checkpoint import load_checkpoint
from robrep.core.config import to_plain
from robrep.core.errors import ConfigError, RobrepError, one_line
from robrep.core.location import check, check_writable, join, parent, redact, write_bytes
from robrep.fanout.selection import select_indices
from robrep.store import find_model
from robrep.store.commit import append_rows
from robrep.store.schema import TUNE_TRIALS_SCHEMA, now_utc, to_table


def main(config: ExperimentConfig) -> None:
    import ray

    from cluster.connect import connect
    from cluster.tune import TuneProblem, run_tune, score_remote
    from datasets.beton import fingerprint, read_info, read_labels

    spec = config.tune
    if spec is None:
        raise ConfigError("this config has no tune section")
    config.writable("store", "storage_path")
    check_writable(parent(spec.output), "tune.output")
    model = find_model(config.store_root, spec.model)
    if model is None:
        raise ConfigError(f"tune.model {spec.model!r} is not in the store's models table at "
                          f"{redact(config.store_root)}; "
                          "train it with python -m jobs.train")
    load_checkpoint(model["checkpoint"])  # a damaged checkpoint is one error line here, not a failed trial each
    data = str(config.data.local("test"))
    info = read_info(data)
    labels = read_labels(data)
    tune_idx, holdout_idx = select_indices(spec.tune_indices, labels), select_indices(spec.holdout_indices, labels)
    if set(tune_idx) & set(holdout_idx):
        raise ConfigError("tune.tune_indices and tune.holdout_indices overlap: the comparison must be on unseen images")
    connect(config.ray.address, config.ray.num_cpus, verbose=config.ray.verbose)
    check_resources(config, "tune")
    # The run's name: what it tunes (the section, less where its result goes and how fast it runs; precision only
    # when not fp32, so runs from before precision existed keep their names), on which weights and data.
    section = {k: v for k, v in to_plain(spec).items() if k != "compile" and (k, v) != ("precision", "fp32")}
    what = {**section, "output": None, "digest": model["digest"], "data": fingerprint(data, info)}
    run_id, start = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12], time.time()
    problem = TuneProblem(str(model["checkpoint"]), str(config.data.path("test")), config.data.stage_source("test"),
                          tuple(tune_idx), spec.objective, spec.constraint, spec.eps, spec.report_every,
                          spec.precision, spec.compile, config.store_root)
    default = {"step_size": spec.default_step_size, "steps": spec.default_steps}
    resources = {"cpu": spec.cpus_per_trial, **({"gpu": spec.gpus_per_trial} if spec.gpus_per_trial else {})}
    print(f"[tune] run {run_id}: {spec.num_samples} trials over step_size and steps on {len(tune_idx)} images",
          flush=True)
    trials, failed, restored = run_tune(
        problem, step_size=(spec.step_size.low, spec.step_size.high), steps=list(spec.steps), default=default,
        num_samples=spec.num_samples, max_concurrent=spec.max_concurrent, resources=resources,
        storage_path=join(config.storage_root, "ray_tune"), name=f"{spec.model}-{run_id}",
        max_failures=spec.max_failures)
    if restored:
        print(f"[tune] run {run_id} resumed from its experiment folder", flush=True)
    for error in failed:
        print(f"[tune] a trial failed and is left out: {one_line(str(error))[:300]}", flush=True)
    if not trials:
        if isinstance(failed[0], RobrepError):
            raise failed[0]  # the same error line as if it had been raised here
        raise RuntimeError(f"every tuning trial of run {run_id} failed; the first: {one_line(str(failed[0]))}")
    rows = [{**t, "run_id": run_id, "model_id": spec.model, "objective": spec.objective, "eps": spec.eps,
             "constraint": spec.constraint, "git_sha": git_sha(), "created_at": now_utc()} for t in trials]
    append_rows(config.store_root, "tune_trials", to_table(rows, TUNE_TRIALS_SCHEMA), key=run_id)
    finished = [t for t in trials if t["steps_done"] == t["steps"]] or trials  # ASHA stops some trials early
    best = min(finished, key=lambda t: t["metric"])
    holdout = dataclasses.replace(problem, indices=tuple(holdout_idx))
    best_holdout, default_holdout = ray.get([score_remote(holdout, best["step_size"], best["steps"], resources),
                                             score_remote(holdout, default["step_size"], default["steps"], resources)])
    result = {"objective": spec.objective, "model_id": spec.model, "run_id": run_id,
              "step_size": float(best["step_size"]), "steps": int(best["steps"]),
              "tuning_metric": float(best["metric"]), "holdout_metric": best_holdout,
              "default": {**default, "holdout_metric": default_holdout}, "trials": len(trials),
              "failed_trials": len(failed), "seconds": time.time() - start}
    output = write_bytes(check(spec.output, "tune.output"), yaml.safe_dump(result, sort_keys=False).encode())
    print(f"[tune] {len(trials)} trials ({len(failed)} failed); best step_size {best['step_size']:.4g}, steps "
          f"{best['steps']}: held-out {spec.objective} metric {best_holdout:.4f} vs default {default_holdout:.4f}; "
          f"wrote {redact(output)}", flush=True)


def cli(argv: list[str] | None = None) -> None:
    run_entry_point(main, __doc__, argv)


if __name__ == "__main__":
    cli()
