"""Compiled artifacts shared through the store (robrep/compile_cache.py): a worker on a node that shares nothing but
S3 with the first one finds every graph the first one compiled, and compiles none anew."""

import json
import os
import subprocess
import sys

from helpers import REPO

# One process = one node: its own Inductor folder (TORCHINDUCTOR_CACHE_DIR), the store its only link to the others.
WORKER = """
import json, sys, torch
from robrep.compile_cache import FOLDER, counters, shared
from robrep.fast import FastModel
from robrep.models import create_model
store = sys.argv[1]
torch.manual_seed(0)
model = create_model("small_cnn", 10, [0.5] * 3, [0.5] * 3, width=4).eval()
fast = FastModel(model, "cpu", compile=True, cache=shared(store, "cpu", True))
x = torch.rand(2, 3, 8, 8, requires_grad=True)
rep = fast.representation(x, fake_relu=True)
(grad,) = torch.autograd.grad(rep.sum(), x)
logits = fast(x.detach())
fast(x.detach()[:1])  # another batch size: the dynamic batch dimension compiles nothing more
print(json.dumps({**counters(), "files": fast.cache.files(), "sum": float(grad.sum() + logits.sum())}))
"""


def _node(store: str, folder) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", WORKER, store], capture_output=True, text=True, env=env,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_node_loads_the_first_ones_compiled_graphs_from_s3(s3, tmp_path):
    _, bucket = s3
    store = f"s3://{bucket}/compile-cache-store"
    first = _node(store, tmp_path / "node1")
    assert first["miss"] >= 2 and first["hit"] == 0, first  # the representation (with its backward) and the logits
    assert len(first["files"]) == 1 and first["files"][0].startswith(f"{store}/compile_cache/torch"), first
    second = _node(store, tmp_path / "node2")
    assert second["miss"] == 0 and second["hit"] == first["miss"], second
    assert second["files"] == first["files"], "it compiled nothing new, so it published nothing"
    assert abs(second["sum"] - first["sum"]) < 1e-4
