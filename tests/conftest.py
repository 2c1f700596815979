import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_module(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m module args` from the repo root, as a user would; returns the finished process."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def store_overrides(tmp: Path) -> list[str]:
    """--set arguments that put the store, checkpoints and data of a config under tmp."""
    return ["--set", f"store={tmp}/store", "--set", f"storage_path={tmp}/ckpt", "--set", f"data.dir={tmp}/data"]
