"""Bad inputs that only show once a cluster or a disk is asked: a store on a read-only disk, Ray resources no node
of the cluster can offer (Ray would wait for them without end), and a typed error raised inside a Ray task. Each is
one `error:` line naming the problem, exit 2, no traceback, no terminal colour codes, and the store unchanged. The
entry points run as a user runs them (`python -m jobs.<name>`, a local Ray of their own)."""

import os
import subprocess
import sys

import pytest
from helpers import REPO, private_world, run_module, tree_digest

pytestmark = [pytest.mark.ray, pytest.mark.ffcv]


@pytest.fixture(scope="module")
def world(untrained_pair, tmp_path_factory):
    return private_world(untrained_pair, tmp_path_factory.mktemp("refused")), untrained_pair


def assert_refused(done: subprocess.CompletedProcess, names: str) -> None:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert len(errors) == 1 and names in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "\x1b[" not in errors[0], done.stderr[-3000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount (unshare --mount) needs root; CI is root")
@pytest.mark.parametrize("module, args", [
    ("jobs.fanout", ["--config", "{C}"]),
    ("jobs.evaluate", ["--config", "{C}", "--model", "digits_robust", "--max-images", "4"]),
    ("jobs.store", ["repair", "--store", "{S}"]),
])
def test_a_read_only_store_is_one_error_line_before_any_work(world, module, args):
    tmp, _ = world
    store = tmp / "store"
    argv = [a.replace("{C}", str(tmp / "good.yaml")).replace("{S}", str(store)) for a in args]
    before = tree_digest(store)
    script = (f'mount --bind "{store}" "{store}" && mount -o remount,bind,ro "{store}" && '
              f'exec "{sys.executable}" -m {module} ' + " ".join(f"'{a}'" for a in argv))
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert_refused(done, "store=")
    assert "cannot be written" in done.stderr and "Read-only file system" in done.stderr, done.stderr[-2000:]
    assert tree_digest(store) == before


@pytest.mark.parametrize("module, sets, names", [
    ("jobs.fanout", ["ray.num_cpus=1"], "fanout asks for 2 worker(s) of CPU 1 each at once, but this Ray cluster "
                                        "has room for 1"),
    ("jobs.train", ["train.digits_robust.model_id=digits_new", "train.digits_new.cpus_per_worker=3"],
     "train digits_new asks for 2 worker(s) of CPU 3 each"),
])
def test_a_resource_no_node_can_offer_is_an_error_not_a_wait(world, module, sets, names):
    """Before, Ray queued these workers for ever (`ray.num_cpus=0` waited at 0 jobs without end). jobs.tune and
    jobs.main ask the same check_resources after connecting (one Ray start each costs ~30 s, so two are tried)."""
    tmp, _ = world
    before = tree_digest(tmp / "store")
    done = run_module(module, "--config", str(tmp / "good.yaml"), *[a for s in sets for a in ("--set", s)],
                      timeout=300)
    assert_refused(done, names)
    assert tree_digest(tmp / "store") == before


RAISES_IN_TASKS = """
import sys

import ray

from cluster.connect import connect
from jobs.common import run_entry_point
from robrep.core.errors import CheckpointError


@ray.remote
def load():
    raise CheckpointError("model.pt of /ckpt/m is damaged; save it again")


@ray.remote
def buggy():
    raise KeyError("a bug")


def main(task):
    connect(None, 1)
    ray.get(task.remote())


for task in (load, buggy):
    try:
        run_entry_point(lambda config: main(task), "test", [], config_required=False)
    except SystemExit as e:
        print(f"exit {e.code}", file=sys.stderr, flush=True)
"""


def test_a_typed_error_raised_in_a_ray_task_reads_like_ours():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", RAISES_IN_TASKS], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)
    ours, unexpected = done.stderr.split("exit 2\n")
    errors = [line for line in ours.splitlines() if line.startswith("error:")]
    assert errors == ["error: CheckpointError: model.pt of /ckpt/m is damaged; save it again"], ours[-3000:]
    assert "Traceback" not in ours and "\x1b[" not in ours.splitlines()[-1], ours[-3000:]
    # an unexpected failure keeps its traceback and exits 1
    assert done.returncode == 1 and "Traceback" in unexpected and "a bug" in unexpected, unexpected[-3000:]
