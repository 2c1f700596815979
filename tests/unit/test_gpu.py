"""On a CUDA device: the engine runs there, agrees with the CPU, and does no host work inside PGD. Skipped without
CUDA. Imports robrep alone (the GPU machines we measure on have torch but no Ray or FFCV):
`pytest --noconftest tests/unit/test_gpu.py` runs it there."""

import pytest
import torch

from robrep.experiments import noise_image
from robrep.fanout.job import BatchContext
from robrep.fanout.registry import get_kind
from robrep.fast import FastModel
from robrep.models import create_model
from robrep.objectives import inversion
from robrep.pgd import pgd
from robrep.train import AttackSpec, adversarial_examples

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
MEAN, STD = [0.5] * 3, [0.25] * 3


def test_pgd_on_cuda_matches_the_cpu():
    torch.manual_seed(0)
    model = create_model("cifar_resnet18", 10, MEAN, STD).eval()
    x0, target = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)
    results = {}
    for device in ("cpu", "cuda"):
        m = model.to(device)
        with torch.no_grad():
            target_rep = m.representation(target.to(device))
        result = pgd(inversion(m, target_rep), x0.to(device), eps=1000.0, step_size=0.1, steps=10)
        assert result.x.device.type == device
        results[device] = result.loss.cpu()
    torch.testing.assert_close(results["cuda"], results["cpu"], rtol=1e-3, atol=1e-4)


def test_random_starts_and_noise_are_drawn_on_the_gpu_and_pgd_never_syncs():
    torch.manual_seed(0)
    model = create_model("cifar_resnet18", 10, MEAN, STD).eval()
    x0 = noise_image((3, 32, 32), 5, "cuda")
    assert x0.device.type == "cuda" and torch.equal(x0, noise_image((3, 32, 32), 5, "cuda"))
    x0 = torch.stack([noise_image((3, 32, 32), s, "cuda") for s in range(16)])
    y = torch.randint(0, 10, (16,), device="cuda")
    for precision in ("fp32", "bf16"):
        fast = FastModel(model, "cuda", precision)
        attack = AttackSpec(eps=1.0, steps=5, step_size=0.25, restarts=2)
        adversarial_examples(fast, x0, y, attack, keep="best")  # warm-up: cuDNN's autotuner syncs while it searches
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any synchronising call inside raises
        try:
            x_adv = adversarial_examples(fast, x0, y, attack, keep="best")
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert x_adv.device.type == "cuda" and ((x_adv - x0).flatten(1).norm(dim=1) <= 1.0 + 1e-3).all()


def test_the_invert_and_manipulate_kinds_run_on_the_gpu_in_bf16():
    torch.manual_seed(0)
    model = create_model("cifar_resnet18", 10, MEAN, STD).cuda().eval()
    images, labels = torch.rand(6, 3, 32, 32), torch.arange(6)
    ctx = BatchContext(model, FastModel(model, "cuda", "bf16"), "cuda", lambda idx: (images[idx], labels[idx]), 6, {},
                       ("model", "data"))
    invert = [get_kind("invert").job(model_id="m", dataset="d", split="test", target_index=t, source_index=(t + 1) % 6,
                  init=init, rng_seed=t, constraint="l2", eps=1000.0, step_size=0.5, steps=20, precision="bf16")
              for t in range(6) for init in ("noise", "image")]
    rows = get_kind("invert").run(ctx, invert)
    assert len(rows) == 12 and all(r["precision"] == "bf16" and 0 <= r["rep_dist_rel"] < 1 for r in rows)
    manipulate = [get_kind("manipulate").job(model_id="m", dataset="d", split="test", source_index=s, init="image",
                      coordinate=3, constraint="l2", eps=1000.0, step_size=0.5, steps=50, precision="bf16")
                  for s in range(6)]
    rows = get_kind("manipulate").run(ctx, manipulate)
    assert len(rows) == 6 and all(0 <= r["steps_taken"] <= 50 for r in rows)


def test_a_captured_pgd_step_replays_the_eager_steps_without_a_host_sync():
    """capture=True: the step is captured once (after GRAPH_WARMUP eager ones) and replayed; the iterates are the
    eager ones (same kernels: cuDNN picked them during the warm-up), and no call inside the run syncs."""
    torch.manual_seed(0)
    fast = FastModel(create_model("cifar_resnet18", 10, MEAN, STD).eval(), "cuda", "fp32")
    x0, target = torch.rand(16, 3, 32, 32, device="cuda"), torch.rand(16, 3, 32, 32, device="cuda")
    with torch.no_grad():
        target_rep = fast.representation(target)
    eager = pgd(inversion(fast, target_rep), x0, eps=2.0, step_size=0.2, steps=20, keep="best")
    pgd(inversion(fast, target_rep), x0, eps=2.0, step_size=0.2, steps=20, keep="best", capture=True)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        captured = pgd(inversion(fast, target_rep), x0, eps=2.0, step_size=0.2, steps=20, keep="best", capture=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.testing.assert_close(captured.x, eager.x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(captured.loss, eager.loss, rtol=1e-4, atol=1e-6)
    assert (captured.steps_taken == 20).all()


def test_a_step_that_cannot_be_captured_runs_eagerly_after_one_logged_line(caplog, monkeypatch):
    import robrep.pgd as engine

    monkeypatch.setattr(engine, "_WARNED", set())
    torch.manual_seed(0)
    model = create_model("cifar_resnet18", 10, MEAN, STD).cuda().eval()
    x0, target = torch.rand(8, 3, 32, 32, device="cuda"), torch.rand(8, 3, 32, 32, device="cuda")
    with torch.no_grad():
        target_rep = model.representation(target)
    objective = inversion(model, target_rep)

    def syncing(x):  # a host sync inside the loss cannot be captured
        loss = objective(x)
        return loss * (1.0 + 0.0 * float(loss.sum().item()))

    eager = pgd(syncing, x0, eps=2.0, step_size=0.2, steps=10)
    with caplog.at_level("WARNING", logger="robrep.pgd"):
        results = [pgd(syncing, x0, eps=2.0, step_size=0.2, steps=10, capture=True) for _ in range(2)]
    for result in results:
        torch.testing.assert_close(result.x, eager.x, rtol=1e-4, atol=1e-5)
    assert len(caplog.records) == 1 and "not captured as a CUDA graph" in caplog.records[0].getMessage()


def test_a_kept_graph_replays_for_later_batches_of_the_same_shape_with_their_values():
    """An Objective's step is captured in its first run and kept: a second batch of the same shape (other starts,
    targets, radius) replays it from its first step without a host sync and gets the eager iterates."""
    torch.manual_seed(0)
    fast = FastModel(create_model("cifar_resnet18", 10, MEAN, STD).eval(), "cuda", "fp32")
    batches = []
    for _ in range(2):
        x0, target = torch.rand(16, 3, 32, 32, device="cuda"), torch.rand(16, 3, 32, 32, device="cuda")
        with torch.no_grad():
            batches.append((x0, fast.representation(target)))
    settings = [dict(eps=2.0, step_size=0.2), dict(eps=0.7, step_size=0.1)]
    eager = [pgd(inversion(fast, t), x0, steps=12, keep="best", **s)
             for (x0, t), s in zip(batches, settings, strict=True)]
    first = pgd(inversion(fast, batches[0][1]), batches[0][0], steps=12, keep="best", capture=True, **settings[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        second = pgd(inversion(fast, batches[1][1]), batches[1][0], steps=12, keep="best", capture=True,
                     **settings[1])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for captured, plain in ((first, eager[0]), (second, eager[1])):
        torch.testing.assert_close(captured.x, plain.x, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(captured.loss, plain.loss, rtol=1e-4, atol=1e-6)


def test_the_training_attack_captured_matches_eager_batch_after_batch():
    """The training attack (7 steps, a random start) keeps one graph for its batch shape: every later batch
    replays it; the adversarial examples are the eager ones (same random starts: the same seed before each)."""
    fast = FastModel(create_model("cifar_resnet18", 10, MEAN, STD).eval(), "cuda", "fp32")
    attack = AttackSpec(eps=1.0, steps=7, step_size=0.25)
    data = [(torch.rand(16, 3, 32, 32, device="cuda"), torch.randint(0, 10, (16,), device="cuda")) for _ in range(3)]
    for i, (x, y) in enumerate(data):
        torch.manual_seed(i)
        eager = adversarial_examples(fast, x, y, attack)
        torch.manual_seed(i)
        captured = adversarial_examples(fast, x, y, attack, capture=True)
        torch.testing.assert_close(captured, eager, rtol=1e-4, atol=1e-5)
