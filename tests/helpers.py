"""What the tests of every lane share besides fixtures (those are in conftest.py): the repo, the smoke config, running
an entry point as a user does, and configs over the fixtures' data."""

import contextlib
import hashlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SMOKE = "jobs/configs/digits_smoke.yaml"
# tests/<lane>/: unit (no Ray, no FFCV, no subprocess: `make check`), integration (real FFCV, a local Ray, the entry
# points as processes, S3), system (the trained pair, several nodes, `ray job submit`, kills and restarts).
LANES = ("unit", "integration", "system")


def result_rows(ids: list[str], model_id: str = "m1") -> list[dict]:
    """Results rows of an invert job each, as a worker makes them (8 px random images), for store tests."""
    from robrep.images import encode_png
    from robrep.store.schema import now_utc

    image = torch.rand(3, 8, 8)
    return [
        {"run_id": "r", "job_id": i, "kind": "invert", "model_id": model_id, "model_robust": True, "model_eps": 2.0,
         "dataset": "digits", "split": "test", "target_index": n, "source_index": -1, "init": "noise", "rng_seed": n,
         "constraint": "l2", "eps": 1000.0, "step_size": 0.1, "steps": 10, "coordinate": -1, "lam": math.nan,
         "rep_dist": 0.5, "rep_dist_rel": 0.1, "pix_dist_target": 3.0, "pix_dist_source": 2.0, "pred_class": 1,
         "target_class": 1, "source_class": -1, "steps_taken": 10, "loss_final": 0.1, "image_png": encode_png(image),
         "node": "n", "device": "cpu", "seconds": 0.1, "git_sha": "abc", "created_at": now_utc()}
        for n, i in enumerate(ids)
    ]


def results_schema():
    """The results table as a kind with two parameters writes it (robrep.fanout.registry.table_schema adds them)."""
    import pyarrow as pa

    from robrep.store.schema import RESULTS_SCHEMA

    return pa.schema([*RESULTS_SCHEMA, pa.field("eps", pa.float32()), pa.field("steps", pa.int32())])


def grow_store(root, parts=40, rows=5, models=("m0", "m1"), kinds=("invert",), first=0) -> None:
    """`parts` commits through the fan-out's commit path, round robin over the kinds' and models' folders."""
    from robrep.store.commit import commit_rows

    folders = [(k, m) for k in kinds for m in models]
    for p in range(first, first + parts):
        kind, model = folders[p % len(folders)]
        ids = [f"{kind}-{model}-{p}-{i}" for i in range(rows)]
        batch = result_rows(ids, model_id=model)
        for n, row in enumerate(batch):
            row.update(kind=kind, eps=float(p), steps=n, rep_dist=float(p * rows + n), precision="fp32")
        commit_rows(root, "results", batch, ids, durable=False, schema=results_schema())


def run_module(module: str, *args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` from the repo root, as a user would (with `env` added to the environment);
    returns the finished process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def store_overrides(tmp: Path) -> list[str]:
    """--set arguments that put the store, checkpoints and data of a config under tmp."""
    return ["--set", f"store={tmp}/store", "--set", f"storage_path={tmp}/ckpt", "--set", f"data.dir={tmp}/data"]


def private_world(pair: Path, tmp: Path) -> Path:
    """tmp holding a copy of the untrained pair's store and good.yaml: the smoke config on that store and the pair's
    data (tests that must leave a store untouched hash it before and after)."""
    shutil.copytree(pair / "store", tmp / "store")
    config = yaml.safe_load((REPO / SMOKE).read_text())
    config.update(store=str(tmp / "store"), storage_path=str(tmp / "ckpt"))
    config["data"]["dir"] = str(pair / "data")
    (tmp / "good.yaml").write_text(yaml.safe_dump(config))
    return tmp


def tree_digest(*folders: Path) -> str:
    """One digest of every file's path and bytes under the folders: equal before and after means untouched."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_for(trained: Path, store: Path, **fanout) -> dict:
    data = yaml.safe_load(Path(REPO / SMOKE).read_text())
    data.update(store=str(store), storage_path=str(trained / "ckpt"))
    data["data"]["dir"] = str(trained / "data")
    data["fanout"].update(fanout)
    return data


def seed_store(trained: Path, tmp: Path) -> Path:
    store = tmp / "store"
    store.mkdir()
    os.symlink(trained / "store" / "models", store / "models")
    return store


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


CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]


def robustness_layout(state: dict, mean, std) -> dict:
    """A checkpoint as robustness.train saves it: the model twice, plus the normalizer's (3,1,1) buffers."""
    model = {f"module.model.{k}": v for k, v in state.items()}
    model.update({f"module.attacker.model.{k}": v for k, v in state.items()})
    for prefix in ("module.normalizer.", "module.attacker.normalize."):
        model[prefix + "new_mean"] = torch.tensor(mean).view(3, 1, 1)
        model[prefix + "new_std"] = torch.tensor(std).view(3, 1, 1)
    return {"model": model, "epoch": 150, "optimizer": {"state": {}, "param_groups": []}}


def zoo_checkpoints(folder: str | Path) -> Path:
    """The published files robust_zoo_smoke.yaml imports, each made with its publishing library's own class (random
    weights, 10 classes): a robustness-library CIFAR ResNet-18 and DenseNet in its layout, torchvision's and timm's
    ResNet-18 and timm's ConvNeXt-atto as plain state dicts, RobustBench's Rice2020Overfitting where it keeps it."""
    import timm
    import torchvision
    from robustness.cifar_models.densenet import densenet_cifar
    from robustness.cifar_models.resnet import ResNet18

    from robrep.models import robustbench

    folder = Path(folder)
    (folder / "robustbench" / "cifar10" / "L2").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(robustness_layout(ResNet18(num_classes=10).state_dict(), CIFAR_MEAN, CIFAR_STD),
               folder / "robustness_cifar_resnet18.pt")
    torch.save(robustness_layout(densenet_cifar(num_classes=10).state_dict(), CIFAR_MEAN, CIFAR_STD),
               folder / "robustness_densenet_cifar.pt")
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), folder / "torchvision_resnet18.pt")
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), folder / "timm_resnet18.pt")
    torch.save(timm.create_model("convnext_atto", num_classes=10).state_dict(), folder / "timm_convnext_atto.pt")
    state = robustbench.entry("cifar10", "L2", "Rice2020Overfitting")["model"]().state_dict()
    torch.save({k: v for k, v in state.items() if k not in ("mu", "sigma")},  # as published: no class constants
               folder / "robustbench" / "cifar10" / "L2" / "Rice2020Overfitting.pt")
    return folder


def location_roundtrip(root: str) -> None:
    """Files and a checkpoint written, read, copied and loaded back under `root` (a path or a URI)."""
    from robrep.checkpoint import load_checkpoint, read_meta, save_checkpoint
    from robrep.core.location import copy_file, exists, join, read_bytes, write_bytes
    from robrep.models import create_model

    write_bytes(join(root, "a", "b.bin"), b"x" * 1000)
    assert exists(join(root, "a", "b.bin")) and read_bytes(join(root, "a", "b.bin")) == b"x" * 1000
    with pytest.raises(FileNotFoundError):
        read_bytes(join(root, "a", "missing"))
    copy_file(join(root, "a", "b.bin"), join(root, "c", "d.bin"))
    assert read_bytes(join(root, "c", "d.bin")) == b"x" * 1000
    model = create_model("small_cnn", 10, [0.5] * 3, [0.25] * 3)
    folder = save_checkpoint(join(root, "models", "m"), model, {"arch": "small_cnn", "num_classes": 10,
                                                                "mean": [0.5] * 3, "std": [0.25] * 3})
    loaded, meta = load_checkpoint(folder)
    assert meta["digest"] == read_meta(folder)["digest"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
