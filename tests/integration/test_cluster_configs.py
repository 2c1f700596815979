"""The cluster configs a user starts from: checked by Ray's own launcher code (AWS, on-prem), by the fields
KubeRay's CRDs require (Kubernetes), and against the presets that run on them."""

import copy
import re

import pytest
import yaml
from helpers import REPO
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIGS = REPO / "cluster" / "configs"
GPU_NODES = 4  # what every GPU preset is sized for: ray_cluster.yaml's gpu_worker max, 1 GPU per g5.2xlarge


def load(path):
    return yaml.safe_load(path.read_text())


def launcher_checked(config: dict) -> dict:
    """Ray's `ray up` path without a cloud call: defaults filled in, then the schema and the node types checked."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_aws_config_passes_rays_launcher_checks_and_shares_what_must_be_shared():
    config = load(REPO / "ray_cluster.yaml")
    prepared = launcher_checked(config)
    types = prepared["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}, "fan-out actors, trials and shards must stay off the head"
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    assert sum(types[t]["max_workers"] for t in ("cpu_worker", "gpu_worker")) <= prepared["max_workers"]
    assert types["gpu_worker"]["max_workers"] >= GPU_NODES
    for name, node in types.items():
        assert "IamInstanceProfile" in node["node_config"], f"{name}: an s3:// store needs an instance profile"
    assert {".venv", "runs"} <= set(config["rsync_exclude"]) and ".gitignore" in config["rsync_filter"]
    setup = "\n".join(config["setup_commands"])
    assert "mount -t nfs4" in setup and "fs-0123456789abcdef0" in setup and "/mnt/shared" in setup
    assert "scripts/install.sh" in setup and "DPkg::Lock::Timeout" in setup
    install = (REPO / "scripts" / "install.sh").read_text()
    assert "constraints.txt" in install and "python3-dev" in install and "build-essential" in install
    head = "\n".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head and ".venv/bin" in head
    assert any("auth_token" in target for target in config["file_mounts"])
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "RAY_worker_niceness=0" in "\n".join(commands), "workers at a plain process's priority"


def test_onprem_config_passes_rays_launcher_checks_and_assumes_no_user_or_home():
    text = (CONFIGS / "onprem.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["provider"]["type"] == "local"
    prepared = launcher_checked(config)
    assert prepared["provider"]["worker_ips"] and prepared["provider"]["head_ip"]
    assert not re.search(r"/home/|ubuntu", text), "no hard-coded home folder or user"
    assert "--num-cpus=0" in "\n".join(config["head_start_ray_commands"])
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "RAY_worker_niceness=0" in "\n".join(commands), "workers at a plain process's priority"
    assert {".venv", "runs"} <= set(config["rsync_exclude"])


def _pod_spec_checks(group: dict, where: str) -> dict:
    """The fields a KubeRay head or worker group needs (ray.io/v1 CRD): rayStartParams and a pod template with
    at least one container that has a name and an image."""
    assert isinstance(group.get("rayStartParams"), dict), f"{where}.rayStartParams"
    containers = group["template"]["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers), f"{where}: containers"
    env = {e["name"] for e in containers[0].get("env", [])}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= env, f"{where}: token auth"
    assert {"name": "RAY_worker_niceness", "value": "0"} in containers[0]["env"], f"{where}: workers' niceness"
    mounts = {m["mountPath"] for m in containers[0].get("volumeMounts", [])}
    assert "/mnt/shared" in mounts, f"{where}: the shared volume"
    return containers[0]


def _cluster_spec_checks(spec: dict, where: str) -> None:
    head = spec["headGroupSpec"]
    _pod_spec_checks(head, f"{where}.headGroupSpec")
    assert head["rayStartParams"]["num-cpus"] == "0", "rayStartParams values are strings; the head takes no work"
    gpu_groups = []
    for i, group in enumerate(spec["workerGroupSpecs"]):
        name = f"{where}.workerGroupSpecs[{i}]"
        assert group.get("groupName"), f"{name}.groupName"
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{name}: replicas"
        container = _pod_spec_checks(group, name)
        if "nvidia.com/gpu" in container["resources"]["limits"]:
            gpu_groups.append(group)
    assert gpu_groups and max(g["maxReplicas"] for g in gpu_groups) >= GPU_NODES


def test_kuberay_raycluster_and_rayjob_have_the_fields_the_crds_require():
    documents = list(yaml.safe_load_all((CONFIGS / "kuberay-raycluster.yaml").read_text()))
    by_kind = {d["kind"]: d for d in documents}
    claim = by_kind["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    cluster = by_kind["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    _cluster_spec_checks(cluster["spec"], "RayCluster.spec")
    volumes = cluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert volumes[0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]

    job = load(CONFIGS / "kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m jobs.")
    assert spec["shutdownAfterJobFinishes"] is True and isinstance(spec["ttlSecondsAfterFinished"], int)
    _cluster_spec_checks(spec["rayClusterSpec"], "RayJob.spec.rayClusterSpec")
    config = spec["entrypoint"].split("--config ")[1].split()[0]
    assert (REPO / config).is_file()


def test_dockerfile_builds_with_the_readmes_install_script():
    text = (CONFIGS / "Dockerfile").read_text()
    assert "scripts/install.sh" in text and "constraints.txt" in text
    assert ".venv" in (REPO / ".dockerignore").read_text()


def _presets():
    return sorted(p for p in (REPO / "jobs" / "configs").glob("*.yaml") if not p.stem.endswith("_smoke"))


@pytest.mark.parametrize("path", _presets(), ids=lambda p: p.stem)
def test_every_preset_fits_the_cluster_the_configs_describe(path):
    """No preset asks for more GPUs at once than the 4 GPU nodes of the cluster configs, and every preset has its
    smoke twin."""
    from jobs.config import load_config

    config = load_config(path)
    for spec in config.train:
        if spec.use_gpu:
            assert spec.num_workers * spec.gpus_per_worker <= GPU_NODES, spec.model_id
    if config.fanout is not None:
        assert config.fanout.workers * config.fanout.gpus_per_worker <= GPU_NODES
    if config.tune is not None:
        assert config.tune.max_concurrent * config.tune.gpus_per_trial <= GPU_NODES
    if config.evaluate is not None:
        assert config.evaluate.gpus_per_shard <= 1
    assert (path.parent / f"{path.stem}_smoke.yaml").is_file(), "every preset has a CPU smoke twin"


@pytest.mark.parametrize("path", _presets(), ids=lambda p: p.stem)
def test_gpu_presets_run_bf16_compiled_and_cpu_ones_fp32_eager(path):
    """What runs on a GPU takes the fastest setting that passed the quality guard (bf16, compiled: bench/gpu.py,
    tests/unit/test_fast.py); CPU keeps fp32 eager, the default."""
    from jobs.config import load_config

    config = load_config(path)
    parts = [(s.use_gpu, s.precision, s.compile) for s in config.train]
    if config.fanout is not None:
        parts.append((config.fanout.gpus_per_worker > 0, config.fanout.precision, config.fanout.compile))
    if config.tune is not None:
        parts.append((config.tune.gpus_per_trial > 0, config.tune.precision, config.tune.compile))
    if config.evaluate is not None:
        parts.append((config.evaluate.gpus_per_shard > 0, config.evaluate.precision, config.evaluate.compile))
    for on_gpu, precision, compile in parts:
        assert (precision, compile) == (("bf16", True) if on_gpu else ("fp32", False))
