"""The real `ray job submit` CLI: README's local-head commands run verbatim."""

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO, start_head, stop_head


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
def test_the_readmes_local_head_and_job_submit_commands_run_verbatim(tmp_path, trained_pair):
    """README's local-head block, verbatim, in a fresh bash in a copy of the checkout: start a head from the venv,
    submit the smoke pipeline with --no-wait, see its status, follow its logs, resubmit the fan-out (it skips
    every committed job), stop Ray. It runs in its own PID namespace (`unshare --pid`, as root), so its
    `ray stop` stops its own Ray and nothing else on the machine.

    The same config from nothing, on another Ray (a head, through the job API), gives the same store as the session's
    trained pair (local Ray): the same .beton, the same weights (DDP over 2 workers, shuffles and augmentation
    seeded), the same epoch metrics and the same 68 result rows, bit for bit."""
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
    assert_same_store(trained_pair[0], checkout / "runs" / "local")


def assert_same_store(first: Path, second: Path) -> None:
    """Two runs of the smoke config from nothing computed the same things."""
    fingerprints = [json.loads((root / "data" / "test.json").read_text())["fingerprint"] for root in (first, second)]
    assert fingerprints[0] == fingerprints[1]
    digests = [pd.read_parquet(root / "store" / "models").set_index("model_id")["digest"] for root in (first, second)]
    assert digests[0].to_dict() == digests[1].to_dict()
    columns = ["model_id", "epoch", "loss", "train_acc", "clean_acc", "adv_acc"]
    metrics = [pd.read_parquet(root / "store" / "train_metrics")[columns].sort_values(["model_id", "epoch"])
               .reset_index(drop=True) for root in (first, second)]
    pd.testing.assert_frame_equal(metrics[0], metrics[1])
    keys = ["job_id", "split_rank"]
    rows = [pd.read_parquet(root / "store" / "results").sort_values(keys).reset_index(drop=True)
            for root in (first, second)]
    assert rows[0][keys].equals(rows[1][keys]), "the same job ids"
    for column in ("rep_dist_rel", "pix_dist_target", "pix_dist_source", "image_png", "judge_pred", "activation"):
        same = (rows[0][column] == rows[1][column]) | (rows[0][column].isna() & rows[1][column].isna())
        assert same.all(), column
