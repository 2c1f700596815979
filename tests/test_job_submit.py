"""The real `ray job submit` CLI against a head this test starts on loopback, and stops."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import REPO

SMOKE = "jobs/configs/digits_smoke.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(folder: Path) -> tuple[subprocess.Popen, str, str, dict]:
    """`ray start --head --block` in its own process group, on loopback, with token auth:
    (process, GCS address, dashboard URL, environment for clients)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}  # token auth, as everywhere
    env.pop("RAY_ADDRESS", None)
    gcs_port, dash_port = free_port(), free_port()
    head = subprocess.Popen(
        [f"{bin_dir}/ray", "start", "--head", "--block", "--num-cpus=2", "--node-ip-address=127.0.0.2",
         f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
         "--disable-usage-stats", "--include-dashboard=true"],
        env=env, stdout=open(folder / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash_port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        probe = subprocess.run([f"{bin_dir}/ray", "job", "list", "--address", address], env=env,
                               capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return head, f"127.0.0.2:{gcs_port}", address, env
        assert head.poll() is None, (folder / "head.log").read_text()[-3000:]
        time.sleep(2)
    pytest.fail("the Ray head did not come up: " + (folder / "head.log").read_text()[-3000:])


def stop_head(head: subprocess.Popen) -> None:
    """This head and everything it started, by process id (a graceful `ray stop` takes about 30 s)."""
    started = psutil.Process(head.pid).children(recursive=True)
    os.killpg(head.pid, signal.SIGKILL)
    for process in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    head.wait(timeout=60)


@pytest.fixture
def ray_head(tmp_path):
    head, _, address, env = start_head(tmp_path)
    yield address, env
    stop_head(head)


def submit(address: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    # The shipped working dir has no .git, so the commit travels as an environment variable.
    runtime_env = json.dumps({"env_vars": {"ROBREP_GIT_SHA": "sha-under-test"}})
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
           "--runtime-env-json", runtime_env, "--", "python", "-m", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.ray
@pytest.mark.slow
def test_job_submit_smoke_succeeds_and_bad_config_fails(ray_head, tmp_path):
    address, env = ray_head
    sets = ["--set", f"store={tmp_path}/store", "--set", f"storage_path={tmp_path}/ckpt",
            "--set", f"data.dir={tmp_path}/data", "--set", "ray.address=auto"]
    ok = submit(address, env, "jobs.main", "--config", SMOKE, *sets)
    assert ok.returncode == 0, ok.stdout[-4000:] + ok.stderr[-2000:]
    assert "succeeded" in (ok.stdout + ok.stderr).lower()
    results = pd.read_parquet(tmp_path / "store" / "results")
    assert len(results) == 62 and results[results["kind"] != "top_activating"]["job_id"].is_unique
    assert set(results["git_sha"]) == {"sha-under-test"}

    again = submit(address, env, "jobs.fanout", "--config", SMOKE, *sets)  # the fan-out alone, resuming
    assert again.returncode == 0 and "52 jobs, 52 already in the store, 0 to run" in again.stdout + again.stderr

    bad = submit(address, env, "jobs.main", "--config", SMOKE, "--set", "fanout.stepz=1", *sets)
    assert bad.returncode != 0
    assert "failed" in (bad.stdout + bad.stderr).lower()
    assert "unknown config key 'fanout.stepz'" in bad.stdout + bad.stderr
