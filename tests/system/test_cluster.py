"""Nodes that share nothing by accident: a Ray cluster whose head (CPU 0, like ray_cluster.yaml's) runs here and
whose two worker nodes each run in their own mount and host-name namespace (`unshare --mount --uts`, as root), with
a private tmpfs over /tmp (or, when the checkout itself lives in /tmp, over the test folders and Ray's /tmp/ray).
No file one node writes locally is visible to another. Shared: an S3 endpoint (moto's server), and in the second
variant one explicitly shared folder, the NFS model. Every entry point is submitted as a user would, as a Ray job
with the checkout as its working dir."""

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.fs as pafs
import pytest
import yaml
from helpers import REPO, SMOKE, start_head, stop_head

pytestmark = [pytest.mark.ray, pytest.mark.ffcv, pytest.mark.slow]

if os.geteuid() != 0:  # CI and this machine run as root; elsewhere the namespaces cannot be made
    pytest.skip("unshare --mount needs root", allow_module_level=True)

NODES = {"node-a": "127.0.0.3", "node-b": "127.0.0.4"}


def _under(path: Path, folder: str) -> bool:
    return str(path.resolve()).startswith(folder.rstrip("/") + "/")


def private_folders(basetemp: Path) -> list[str]:
    """What each worker node gets its own empty tmpfs over."""
    if any(_under(p, "/tmp") for p in (REPO, Path(sys.executable))):
        return [str(basetemp), "/tmp/ray"]  # the code must stay visible: it is on every node, as file_mounts put it
    return ["/tmp"]


def start_worker_node(name: str, ip: str, gcs: str, env: dict, private: list[str], marker: Path, log: Path):
    """`ray start --block` in new mount + UTS namespaces: host name `name`, a private tmpfs over each folder of
    `private`. Fails (exit 97) if the marker file the test wrote on the host is still visible there."""
    mounts = "; ".join(f"mkdir -p {p} && mount -t tmpfs tmpfs {p}" for p in private)
    script = (f"set -e; hostname {name}; {mounts}; if [ -e {marker} ]; then exit 97; fi; "
              f"exec {Path(sys.executable).parent}/ray start --block --address={gcs} --node-ip-address={ip} "
              f"--num-cpus=1 --object-store-memory=300000000 --disable-usage-stats")
    return subprocess.Popen(["unshare", "--mount", "--uts", "--propagation", "private", "--", "sh", "-c", script],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    """(JobSubmissionClient, a test folder, s3 environment, bucket, a shared folder outside the private ones)."""
    from ray.job_submission import JobSubmissionClient

    s3_env, bucket = s3
    folder = tmp_path_factory.mktemp("cluster")
    marker = folder / "host-only-marker"
    marker.write_text("a worker node must not see this file")
    shared = Path("/var/tmp") / f"robrep-shared-{uuid.uuid4().hex[:8]}"  # the NFS model: seen by every node
    shared.mkdir(parents=True)
    head, gcs, address, env = start_head(folder, num_cpus=0)
    private = private_folders(tmp_path_factory.getbasetemp())
    workers = [start_worker_node(name, ip, gcs, env, private, marker, folder / f"{name}.log")
               for name, ip in NODES.items()]
    client = JobSubmissionClient(address)
    deadline = time.time() + 120
    while _alive_nodes(gcs, env) < 3:
        for worker, name in zip(workers, NODES, strict=True):
            assert worker.poll() is None, (folder / f"{name}.log").read_text()[-3000:]
        assert time.time() < deadline, "the worker nodes did not join"
        time.sleep(2)
    yield client, folder, s3_env, bucket, shared
    for worker in workers:
        started = psutil.Process(worker.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        for process in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    stop_head(head)
    shutil.rmtree(shared, ignore_errors=True)


def _alive_nodes(gcs: str, env: dict) -> int:
    out = subprocess.run([f"{Path(sys.executable).parent}/ray", "list", "nodes", "--address", gcs, "--format",
                          "json", "--filter", "state=ALIVE"], env=env, capture_output=True, text=True, timeout=60)
    return out.stdout.count('"node_id"') if out.returncode == 0 else 0


def run_job(client, *args: str, timeout: int = 600) -> str:
    """Submit `python -m args` with the checkout as working dir; wait; return its logs (assert it succeeded)."""
    job = client.submit_job(entrypoint="python -m " + shlex.join(args), runtime_env={
        "working_dir": str(REPO), "env_vars": {"ROBREP_GIT_SHA": "sha-cluster-test", "PYTHONUNBUFFERED": "1"}})
    deadline = time.time() + timeout
    while (status := client.get_job_status(job).value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.time() < deadline, f"{args[0]} did not finish in {timeout}s"
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", f"{args[0]}: {status}\n{logs[-5000:]}"
    return logs


def test_the_smoke_pipeline_runs_on_nodes_that_share_only_s3(cluster):
    """build -> train (2 ranks, one per node) -> evaluate -> fan-out -> tune -> report, with the store,
    storage_path, models, tune output and report under s3://; the betons staged from s3:// to each node's private
    data.dir. The results are then read with pandas straight from S3, and the tuned settings from there too."""
    client, folder, _, bucket, _ = cluster
    root = f"s3://{bucket}/pipeline"
    sets = ["--config", SMOKE, "--set", f"store={root}/store", "--set", f"storage_path={root}/ckpt",
            "--set", f"data.dir={folder}/data", "--set", f"data.stage_from={root}/data", "--set", "ray.address=auto",
            "--set", "train.digits_standard.placement_strategy=STRICT_SPREAD",
            "--set", "train.digits_robust.placement_strategy=STRICT_SPREAD",
            "--set", "train.digits_standard.epochs=1", "--set", "train.digits_robust.epochs=1",
            "--set", f"tune.output={root}/tune_best.yaml", "--set", "tune.num_samples=4"]
    main = run_job(client, "jobs.main", *sets)
    assert "uploaded it to s3://" in main and "58 to run" in main
    evaluate = run_job(client, "jobs.evaluate", *sets, "--model", "digits_robust", "--eps", "2.0", "--step-size",
                       "0.25", "--max-images", "40")
    assert "digits_robust" in evaluate
    tune = run_job(client, "jobs.tune", *sets)
    assert f"wrote {root}/tune_best.yaml" in tune
    run_job(client, "jobs.report", *sets)

    results = pd.read_parquet(f"{root}/store/results")  # pandas, straight from S3
    assert len(results) == 68 and set(results["git_sha"]) == {"sha-cluster-test"}
    assert set(results["node"]) == set(NODES), "the fan-out ran on both worker nodes, never on the head"
    metrics = pd.read_parquet(f"{root}/store/train_metrics")  # written by rank 0 on a worker node
    assert sorted(metrics["epoch"]) == [0, 0] and set(metrics["world_size"]) == {2}
    models = pd.read_parquet(f"{root}/store/models")
    assert all(c.startswith(f"{root}/ckpt/models/") for c in models["checkpoint"])
    assert len(pd.read_parquet(f"{root}/store/evaluations")) == 1
    assert len(pd.read_parquet(f"{root}/store/tune_trials")) == 4
    from jobs.config import load_config  # --from-tune reads the tuned settings from S3
    from robrep.core.location import read_bytes

    tuned = load_config(SMOKE, from_tune=f"{root}/tune_best.yaml")
    best = yaml.safe_load(read_bytes(f"{root}/tune_best.yaml"))
    assert tuned.fanout.jobs[0].step_size == pytest.approx(best["step_size"])
    fs, path = pafs.FileSystem.from_uri(root)
    for key in ("report/report.html", "ckpt/models/digits_robust/model.pt", "ckpt/models/digits_robust/meta.json",
                "tune_best.yaml", "data/train.beton", "data/train.json"):
        assert fs.get_file_info(f"{path}/{key}").type == pafs.FileType.File, key
    # Nothing went to a local folder named after the URI (the old `Path("s3://b/x").resolve()` bug).
    assert not (REPO / "s3:").exists() and not Path("s3:").exists()


def test_training_fanout_and_evaluate_share_one_nfs_folder(cluster):
    """The NFS model: store, checkpoints and data in one folder every node sees, and nothing else shared. One
    robust model (2 ranks, one per node), a small fan-out and an evaluation."""
    client, _, _, _, shared = cluster
    model = ("{model_id: nfs_robust, arch: small_cnn, epochs: 1, batch_size: 64, lr: 0.1, lr_milestones: [1], "
             "attack: {eps: 2.0, steps: 3, step_size: 0.7}, eval_attack: {eps: 2.0, steps: 3, step_size: 0.7}, "
             "placement_strategy: STRICT_SPREAD}")
    sets = ["--config", SMOKE, "--set", f"store={shared}/store", "--set", f"storage_path={shared}/ckpt",
            "--set", f"data.dir={shared}/data", "--set", "ray.address=auto", "--set", f"train=[{model}]",
            "--set", "fanout.models=[nfs_robust]", "--set", "fanout.indices.n=4",
            "--set", "fanout.jobs=[{kind: invert, inits: [noise, image], step_size: 0.1, steps: 10}]"]
    run_job(client, "jobs.main", *sets)
    run_job(client, "jobs.evaluate", *sets, "--model", "nfs_robust", "--eps", "2.0", "--step-size", "0.25",
            "--max-images", "40")
    results = pd.read_parquet(shared / "store" / "results")
    assert len(results) == 8 and set(results["node"]) == set(NODES)
    metrics = pd.read_parquet(shared / "store" / "train_metrics")
    assert set(metrics["world_size"]) == {2}
    assert (shared / "ckpt" / "models" / "nfs_robust" / "model.pt").is_file()
    assert len(pd.read_parquet(shared / "store" / "evaluations")) == 1
