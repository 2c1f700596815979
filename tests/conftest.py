"""Fixtures every lane shares (tests/unit, tests/integration, tests/system): the trained and untrained pairs, S3,
seeding. The expensive ones start only for the tests that ask for them."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from helpers import REPO, SMOKE, free_port, run_module, store_overrides


def pytest_configure(config):
    """Ray's token authentication on, as for users: RAY_AUTH_MODE=token and a token in ~/.ray (made once).
    Not for a run of the unit lane alone, which never imports Ray."""
    if config.args and all(Path(arg).resolve().is_relative_to(REPO / "tests" / "unit") for arg in config.args):
        return
    from cluster.connect import use_token_auth

    use_token_auth()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _compiled_code_freed_before_exit():
    """Dynamo's caches (the guards of every torch.compile'd function the tests ran) are freed at the end of the
    session, while the interpreter is whole: freed during its finalization instead, a guard's cleanup can touch Python
    objects already gone (pytorch/pytorch#178231), and CI once saw pytest segfault after its summary."""
    yield
    torch._dynamo.reset()


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where CUDA is."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)






@pytest.fixture(scope="session")
def trained_pair(tmp_path_factory):
    """jobs.main on the smoke config, once per test run: the digits data, a standard and a robust model
    trained with Ray Train, every fan-out kind in the store, and the report. (tmp folder, finished process).
    Tests that use it must not change its store: copy it first."""
    tmp = tmp_path_factory.mktemp("trained_pair")
    proc = run_module("jobs.main", "--config", SMOKE, *store_overrides(tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, proc




@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-protocol server (moto's server mode) on 127.0.0.1 with one bucket, given to the code the standard
    AWS way: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION in the environment of
    this process and of everything it starts. Yields (environment variables, bucket)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "robrep-test",
           "AWS_SECRET_ACCESS_KEY": "robrep-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    bucket = f"robrep-{uuid.uuid4().hex[:8]}"
    import boto3

    deadline = time.time() + 60
    while True:
        try:
            boto3.client("s3").create_bucket(Bucket=bucket)
            break
        except Exception:
            assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
    yield env, bucket
    server.kill()
    server.wait(timeout=30)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def untrained_pair(tmp_path_factory):
    """The digits smoke data and two (untrained) small CNNs registered in a store: no Ray Train needed. Tests
    that use it must not change it: seed_store gives a store of their own that sees its models."""
    from datasets.beton import read_info
    from jobs.build_dataset import build
    from jobs.config import DataSpec
    from robrep.checkpoint import save_checkpoint
    from robrep.models import create_model
    from robrep.store.commit import append_rows
    from robrep.store.schema import MODELS_SCHEMA, now_utc, to_table

    tmp = tmp_path_factory.mktemp("fanout")
    build(DataSpec(dir=str(tmp / "data")))
    info = read_info(tmp / "data" / "train.beton")
    for seed, model_id in enumerate(("digits_standard", "digits_robust")):
        torch.manual_seed(seed)
        model = create_model("small_cnn", 10, info["mean"], info["std"], width=8)
        meta = {"model_id": model_id, "arch": "small_cnn", "arch_kwargs": {"width": 8}, "num_classes": 10,
                "mean": info["mean"], "std": info["std"], "robust": bool(seed), "eps": float(seed)}
        save_checkpoint(tmp / "ckpt" / model_id, model, meta)
        row = {"model_id": model_id, "arch": "small_cnn", "robust": bool(seed), "eps": float(seed),
               "checkpoint": str(tmp / "ckpt" / model_id), "created_at": now_utc()}
        append_rows(tmp / "store", "models", to_table([row], MODELS_SCHEMA), key=model_id)
    return tmp



