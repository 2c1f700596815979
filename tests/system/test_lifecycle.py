"""The job lifecycle on a real local head, with the real CLI: `ray job submit --no-wait --submission-id`, `ray job
status`, `ray job logs [-f]`, `ray job stop` mid-run, then a resubmission that resumes: training at the next epoch,
the fan-out past its committed jobs, Tune from its experiment folder (and a failed trial does not end a Tune run)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO, start_head, stop_head
from test_training import SLOW, audits, experiment, registered_epochs, slow_data

pytestmark = [pytest.mark.ray, pytest.mark.ffcv, pytest.mark.slow]

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    process, _, address, env = start_head(tmp_path_factory.mktemp("lifecycle_head"))
    yield address, env
    stop_head(process)


def cli(head, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    address, env = head
    return subprocess.run([RAY, "job", args[0], "--address", address, *args[1:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def submit(head, submission_id: str, *module_args: str, env_vars: dict | None = None) -> None:
    runtime_env = {"env_vars": {"ROBREP_GIT_SHA": "sha-under-test", "PYTHONUNBUFFERED": "1", **(env_vars or {})}}
    out = cli(head, "submit", "--working-dir", ".", "--no-wait", "--submission-id", submission_id,
              "--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", *module_args)
    assert out.returncode == 0 and submission_id in out.stdout + out.stderr, out.stdout + out.stderr


def status(head, submission_id: str) -> str:
    """The job's state, through the SDK (the CLI's `ray job status` is exercised in the test itself)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head[0]).get_job_status(submission_id).value


def wait_until(predicate, head, submission_id: str, timeout: float = 300):
    """Poll `predicate` while the job runs (its state read with the SDK: a CLI call per poll costs a CPU-second)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head[0])
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        state = client.get_job_status(submission_id).value
        assert state in ("PENDING", "RUNNING"), client.get_job_logs(submission_id)[-3000:]
        time.sleep(0.3)
    raise AssertionError("timed out")


def follow(head, submission_id: str) -> str:
    """`ray job logs -f` to the job's end; the job must have succeeded."""
    logs = cli(head, "logs", "-f", submission_id, timeout=600).stdout
    assert status(head, submission_id) == "SUCCEEDED", logs[-4000:]
    return logs


def stop(head, submission_id: str) -> None:
    out = cli(head, "stop", submission_id)
    assert out.returncode == 0, out.stdout + out.stderr
    assert status(head, submission_id) == "STOPPED"


def write(config: dict, tmp: Path) -> str:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_stop_then_resubmit_resumes_training_fanout_and_tune(head, tmp_path):
    config = slow_data(experiment(tmp_path, **SLOW))
    config["fanout"] = {"models": ["m"], "split": "test", "indices": {"mode": "first", "n": 32}, "batch_size": 4,
                        "workers": 2, "max_in_flight": 2,
                        "jobs": [{"kind": "invert", "inits": ["noise"], "step_size": 0.1, "steps": 600}]}
    config["tune"] = {"model": "m", "steps": [20, 40], "report_every": 10, "num_samples": 4, "max_concurrent": 2,
                      "default_steps": 40, "tune_indices": {"mode": "first", "n": 8},
                      "holdout_indices": {"mode": "list", "values": list(range(100, 108))},
                      "output": str(tmp_path / "best.yaml")}
    path = write(config, tmp_path)
    subprocess.run([sys.executable, "-m", "jobs.build_dataset", "--config", path], cwd=REPO, check=True,
                   capture_output=True)

    # Training: stopped once Ray Train has registered a checkpoint, then resubmitted.
    submit(head, "train-1", "jobs.train", "--config", path)
    shown = cli(head, "status", "train-1")
    assert shown.returncode == 0 and "train-1" in shown.stdout + shown.stderr
    assert any(word in (shown.stdout + shown.stderr).lower() for word in ("running", "pending"))
    wait_until(lambda: registered_epochs(tmp_path), head, "train-1")
    stop(head, "train-1")
    shown = cli(head, "status", "train-1")
    assert "stopped" in (shown.stdout + shown.stderr).lower()
    registered = registered_epochs(tmp_path)
    saved = {torch.load(p, weights_only=True)["epoch"]
             for p in (tmp_path / "ckpt" / "ray_train" / "m").glob("checkpoint_*/state.pt")}
    first_pids = {r["pid"] for r in audits(tmp_path)}
    assert registered and max(saved) < 3 and not (tmp_path / "store" / "models").exists()
    assert "train-1" in cli(head, "list").stdout
    submit(head, "train-2", "jobs.train", "--config", path)
    follow(head, "train-2")
    resumed = [r for r in audits(tmp_path) if r["pid"] not in first_pids]
    start = min(r["epoch"] for r in resumed)
    assert start >= max(registered) + 1 >= 1 and start - 1 in saved, (start, registered, saved)
    assert {r["epoch"] for r in resumed} == set(range(start, 4))
    assert pd.read_parquet(tmp_path / "store" / "models")["epochs"].tolist() == [4]

    # Fan-out: stopped after its first committed part, then resubmitted: it skips what is in the store.
    parts = tmp_path / "store" / "results"
    submit(head, "fanout-1", "jobs.fanout", "--config", path)
    wait_until(lambda: list(parts.rglob("part-*.parquet")), head, "fanout-1")
    stop(head, "fanout-1")
    committed = len(pd.read_parquet(parts))
    assert 0 < committed < 32, "the stop came after the fan-out had finished; make its jobs slower"
    submit(head, "fanout-2", "jobs.fanout", "--config", path)
    logs = follow(head, "fanout-2")
    assert f"32 jobs, {committed} already in the store, {32 - committed} to run" in logs
    results = pd.read_parquet(parts)
    assert len(results) == 32 and results["job_id"].is_unique and set(results["git_sha"]) == {"sha-under-test"}

    # Tune: one trial is killed (SIGKILL of its worker) and the run goes on without it; the resubmission
    # restores the run from its experiment folder and retries only that trial.
    submit(head, "tune-1", "jobs.tune", "--config", path,
           env_vars={"ROBREP_FAULT": "tune.trial:1", "ROBREP_FAULT_ONCE": str(tmp_path / "killed-one-trial")})
    logs = follow(head, "tune-1")
    assert (tmp_path / "killed-one-trial").exists() and "a trial failed and is left out" in logs
    first = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert (first["trials"], first["failed_trials"]) == (3, 1)
    submit(head, "tune-2", "jobs.tune", "--config", path)
    logs = follow(head, "tune-2")
    assert "resumed from its experiment folder" in logs
    second = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert (second["trials"], second["failed_trials"], second["run_id"]) == (4, 0, first["run_id"])
    trials = pd.read_parquet(tmp_path / "store" / "tune_trials")
    assert trials["trial_id"].nunique() == 4  # the three finished trials kept their results; one more ran


def test_a_bad_config_fails_the_job_with_one_error_line(head, tmp_path):
    submit(head, "bad-1", "jobs.main", "--config", "jobs/configs/digits_smoke.yaml", "--set", "fanout.stepz=1",
           "--set", f"store={tmp_path}/store")
    deadline = time.time() + 120
    while status(head, "bad-1") in ("PENDING", "RUNNING"):
        assert time.time() < deadline
        time.sleep(1)
    assert status(head, "bad-1") == "FAILED"
    errors = [line for line in cli(head, "logs", "bad-1").stdout.splitlines() if line.startswith("error:")]
    assert errors == ["error: ConfigError: unknown config key 'fanout.stepz'"] or \
        (len(errors) == 1 and "unknown config key 'fanout.stepz'" in errors[0]), errors
