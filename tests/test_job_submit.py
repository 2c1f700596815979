"""The real `ray job submit` CLI: README's local-head commands run verbatim; the helpers other tests start and stop
their heads with."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import REPO, free_port

SMOKE = "jobs/configs/digits_smoke.yaml"


def start_head(folder: Path, num_cpus: int = 2) -> tuple[subprocess.Popen, str, str, dict]:
    """`ray start --head --block` in its own process group, on loopback, with token auth:
    (process, GCS address, dashboard URL, environment for clients)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}  # token auth, as everywhere
    env.pop("RAY_ADDRESS", None)
    gcs_port, dash_port = free_port(), free_port()
    head = subprocess.Popen(
        [f"{bin_dir}/ray", "start", "--head", "--block", f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.2",
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


def readme_block(name: str) -> str:
    """The bash block of README.md marked `<!-- verbatim: name -->`, exactly as a user copies it."""
    text = (REPO / "README.md").read_text()
    marker = f"<!-- verbatim: {name} -->"
    assert marker in text, f"README.md lost its {marker} block"
    return text.split(marker, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]


def fresh_shell_env() -> dict:
    """What a new login shell has after the two set-up commands: no venv on PATH, no Ray variables."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.environ["HOME"],
            "LANG": "C.UTF-8", "TERM": "dumb"}


@pytest.mark.ray
@pytest.mark.slow
def test_the_readmes_local_head_and_job_submit_commands_run_verbatim(tmp_path):
    """README's local-head block, verbatim, in a fresh bash in a copy of the checkout: start a head from the venv,
    submit the smoke pipeline with --no-wait, see its status, follow its logs, resubmit the fan-out (it skips
    every committed job), stop Ray. It runs in its own PID namespace (`unshare --pid`, as root), so its
    `ray stop` stops its own Ray and nothing else on the machine."""
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 8265)) != 0, "port 8265 is taken: the README's head needs it"
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", "runs", ".git", "__pycache__", ".*_cache"))
    (checkout / ".venv").symlink_to(REPO / ".venv")
    script = "set -eo pipefail\n" + readme_block("local-head")
    isolated = ["unshare", "--pid", "--fork", "--mount-proc"] if os.geteuid() == 0 else []
    proc = subprocess.run([*isolated, "bash", "-c", script], cwd=checkout, env=fresh_shell_env(),
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "smoke-1" in out and "'smoke-2' succeeded" in out
    assert "[main] done" in out and "58 jobs, 58 already in the store, 0 to run" in out
    results = pd.read_parquet(checkout / "runs" / "local" / "store" / "results")
    assert len(results) == 68 and results[results["kind"] != "top_activating"]["job_id"].is_unique
