"""Nothing unauthenticated on the network: the local Ray that `make demo` starts refuses a job submit and a
driver that lack its token, serves one that has it, and keeps the dashboard on loopback."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import REPO

pytestmark = [pytest.mark.ray, pytest.mark.slow]

START = """
import json, os, time
import ray
from cluster.connect import connect
connect(None, 1)

@ray.remote
def niceness():
    return os.nice(0)

node = ray._private.worker.global_worker.node
print(json.dumps({"gcs": node.gcs_address, "dashboard": node.address_info["webui_url"],
                  "worker_niceness": ray.get(niceness.remote())}), flush=True)
time.sleep(600)
"""


@pytest.fixture
def local_ray():
    """A local Ray started by robrep's connect(), as jobs.main does; stopped by process id afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", START], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "token"})
    line = proc.stdout.readline()
    assert line, proc.stderr.read()[-3000:]
    yield proc, json.loads(line)
    started = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for process in started:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def client(env_change: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_change}
    for key in [k for k, v in env_change.items() if v is None]:
        env.pop(key)
    return subprocess.run(list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_workers_run_at_the_niceness_of_a_plain_process(local_ray):
    """Ray's default niceness 15 for workers starves them on a small machine (bench/train.py: 0.59 of a plain
    process); robrep's local Ray starts them at 0, level with Ray's own services (which stay at 0 too)."""
    proc, info = local_ray
    assert info["worker_niceness"] == 0
    services = [p for p in psutil.Process(proc.pid).children(recursive=True)
                if any(name in " ".join(p.cmdline()) for name in ("raylet", "gcs_server"))]
    assert services and all(p.nice() == 0 for p in services)


def test_clients_without_the_token_are_refused(local_ray):
    proc, addresses = local_ray
    ray_cli = str(Path(sys.executable).parent / "ray")
    url = f"http://{addresses['dashboard']}"
    assert re.match(r"127\.0\.0\.1:\d+$", addresses["dashboard"]), addresses  # the dashboard stays on loopback

    ok = client({}, ray_cli, "job", "list", "--address", url)
    assert ok.returncode == 0, ok.stderr[-2000:]  # with the token: served
    for change in ({"RAY_AUTH_TOKEN": "not-the-token"}, {"RAY_AUTH_MODE": "disabled"}):
        refused = client(change, ray_cli, "job", "submit", "--address", url, "--", "echo", "pwned")
        assert refused.returncode != 0 and "pwned" not in refused.stdout, (change, refused.stdout[-2000:])
        assert re.search(r"(?i)unauthori[sz]ed|authentication|401|token", refused.stdout + refused.stderr), change

    driver = f"import ray; ray.init(address='{addresses['gcs']}'); print('connected', flush=True)"
    refused = client({"RAY_AUTH_TOKEN": "not-the-token"}, sys.executable, "-c", driver)
    assert refused.returncode != 0 and "connected" not in refused.stdout, refused.stderr[-2000:]
    assert re.search(r"(?i)authentication|unauthenticated|token", refused.stderr), refused.stderr[-2000:]

    listening = listeners(proc.pid)
    print("listening:", json.dumps(listening, indent=1))
    dashboard_port = int(addresses["dashboard"].rsplit(":", 1)[1])
    assert {addr for addr, port, _ in listening if port == dashboard_port} == {"127.0.0.1"}


def listeners(root_pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket that the Ray processes under root_pid listen on."""
    deadline = time.time() + 10
    while time.time() < deadline:
        pids = {p.pid: p.name() for p in psutil.Process(root_pid).children(recursive=True)}
        found = []
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
                found.append((conn.laddr.ip, conn.laddr.port, pids[conn.pid]))
        if found:
            return sorted(found)
        time.sleep(1)
    return []
