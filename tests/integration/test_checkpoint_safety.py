"""Pickled code in a checkpoint never runs: each load happens in a child process that would show it."""

import json
import sys

import torch

from robrep.checkpoint import save_checkpoint
from robrep.models import create_model

META = {"arch": "small_cnn", "arch_kwargs": {"width": 8}, "num_classes": 10, "mean": [0.1] * 3, "std": [0.2] * 3}


class Payload:
    """Unpickling this runs `touch <marker>`: the marker shows whether a loader ran pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD makes torch.load run pickles unless the caller passes weights_only=True
# itself, so these tests fail on a copy of the loaders without the flag (torch's own default would hide it).
LOAD_IN_A_CHILD = """
import sys
from robrep.checkpoint import {fn}
from robrep.core.errors import CheckpointError
try:
    {fn}(*sys.argv[1:2], *(["small_cnn", 10] if "{fn}" == "import_robustness_checkpoint" else []))
except CheckpointError as e:
    print("refused:", e)
"""


def load_in_a_child(fn: str, path) -> str:
    import os
    import subprocess

    from helpers import REPO

    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    proc = subprocess.run([sys.executable, "-c", LOAD_IN_A_CHILD.format(fn=fn), str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def match_digest(folder) -> None:
    from robrep.core.location import file_digest

    meta = json.loads((folder / "meta.json").read_text())
    meta["digest"] = file_digest(folder / "model.pt")
    (folder / "meta.json").write_text(json.dumps(meta))



CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
def test_pickled_code_in_a_checkpoint_never_runs(tmp_path):
    model = create_model("small_cnn", 10, META["mean"], META["std"], width=8)
    save_checkpoint(tmp_path / "m", model, META)
    marker = tmp_path / "pwned"
    torch.save({"weight": Payload(marker)}, tmp_path / "m" / "model.pt")
    match_digest(tmp_path / "m")  # whoever can write model.pt can write meta.json: weights_only is the guard
    out = load_in_a_child("load_checkpoint", tmp_path / "m")
    assert "refused: cannot read" in out and not marker.exists()


def test_pickled_code_in_a_robustness_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {"module.model.x": Payload(marker)}, "epoch": 1}, tmp_path / "r.pt")
    out = load_in_a_child("import_robustness_checkpoint", tmp_path / "r.pt")
    assert "refused: cannot read" in out and "weights_only=True" in out and not marker.exists()
