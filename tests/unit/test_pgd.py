"""Invariants of the PGD engine, for every constraint, on tiny inputs."""

import pytest
import torch

from robrep.experiments import measure, noise_image
from robrep.models import create_model
from robrep.objectives import inversion, inversion_loss, untargeted_attack
from robrep.pgd import STEPS, L2Step, pgd

MEAN, STD = [0.3, 0.3, 0.3], [0.4, 0.4, 0.4]
CONSTRAINTS = sorted(STEPS)


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("small_cnn", 10, MEAN, STD, width=8).eval()


def ball_distance(x, center, constraint):
    delta = (x - center).flatten(1)
    return delta.abs().max(dim=1).values if constraint == "linf" else delta.norm(dim=1)


def test_l2_step_has_norm_step_size():
    x, grad = torch.rand(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    step = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0]).view(-1, 1, 1, 1)
    moved = (L2Step.step(x, grad, step) - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(moved, step.flatten())


def test_linf_step_moves_every_pixel_by_step_size():
    x, grad = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    moved = STEPS["linf"].step(x, grad, torch.tensor(0.03))
    torch.testing.assert_close((moved - x).abs(), torch.full_like(x, 0.03))


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("random_start", [False, True])
def test_every_iterate_stays_in_the_ball_and_in_pixel_range(constraint, random_start):
    model = small_model()
    x0, target = torch.rand(6, 3, 12, 12), torch.rand(6, 3, 12, 12)
    center = torch.rand(6, 3, 12, 12)  # a ball centred away from the start, as the radius sweep needs
    eps = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 4.0]) / (10 if constraint == "linf" else 1)
    with torch.no_grad():
        target_rep = model.representation(target)
    seen = []

    def loss_fn(x):
        seen.append(x.detach().clone())
        return inversion_loss(model.representation(x), target_rep)

    result = pgd(loss_fn, x0, eps=eps, step_size=0.3, steps=8, constraint=constraint, center=center,
                 random_start=random_start, generator=torch.Generator().manual_seed(1))
    assert len(seen) == 9  # 8 steps + the final measurement
    for x in seen:
        assert x.min() >= 0 and x.max() <= 1
        if constraint != "unconstrained":
            assert (ball_distance(x, center, constraint) <= eps + 1e-5).all()
    assert torch.equal(result.steps_taken, torch.full((6,), 8))


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_result_does_not_depend_on_the_batch(constraint):
    model = small_model()
    x0, target = torch.rand(5, 3, 12, 12), torch.rand(5, 3, 12, 12)
    with torch.no_grad():
        reps = model.representation(target)
    kw = {"eps": 0.5 if constraint == "linf" else 3.0, "step_size": 0.05, "steps": 10, "constraint": constraint}
    alone = pgd(inversion(model, reps[:1]), x0[:1], **kw)
    batched = pgd(inversion(model, reps), x0, **kw)
    torch.testing.assert_close(alone.x[0], batched.x[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone.loss[0], batched.loss[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_restarts_are_never_worse_than_a_single_run(constraint):
    model = small_model()
    x, y = torch.rand(8, 3, 12, 12), torch.randint(0, 10, (8,))
    kw = {"eps": 0.05 if constraint == "linf" else 0.5, "step_size": 0.02 if constraint == "linf" else 0.1,
          "steps": 5, "constraint": constraint, "random_start": True}
    single = pgd(untargeted_attack(model, y), x, generator=torch.Generator().manual_seed(3), **kw)
    several = pgd(untargeted_attack(model, y), x, restarts=4, generator=torch.Generator().manual_seed(3), **kw)
    assert (several.loss <= single.loss + 1e-6).all()  # the first restart replays the single run


def test_keep_best_returns_the_lowest_loss_seen():
    model = small_model()
    x0, target = torch.rand(4, 3, 12, 12), torch.rand(4, 3, 12, 12)
    with torch.no_grad():
        reps = model.representation(target)
    losses = []
    loss_fn = inversion(model, reps)

    def tracking(x):
        out = loss_fn(x)
        losses.append(out.detach())
        return out

    result = pgd(tracking, x0, eps=1000.0, step_size=2.0, steps=6, keep="best")  # a step too big: it oscillates
    torch.testing.assert_close(result.loss, torch.stack(losses).min(dim=0).values)
    torch.testing.assert_close(loss_fn(result.x), result.loss, atol=1e-5, rtol=1e-5)


def test_stopped_examples_stop_moving_and_record_their_steps():
    model = small_model()
    x0, target = torch.rand(3, 3, 12, 12), torch.rand(3, 3, 12, 12)
    calls = [0]

    def loss_fn(x):
        calls[0] += 1
        return inversion(model, model.representation(target).detach())(x)

    def stop_fn():  # example 0 is done at once, example 1 after 3 steps, example 2 never
        return torch.tensor([True, calls[0] > 3, False])

    result = pgd(loss_fn, x0, eps=1000.0, step_size=0.1, steps=6, stop_fn=stop_fn)
    assert result.steps_taken.tolist() == [0, 3, 6]
    assert torch.equal(result.x[0], x0[0])


def test_inversion_reduces_representation_distance():
    model = small_model()
    target = torch.rand(4, 3, 12, 12)
    x0 = torch.stack([noise_image((3, 12, 12), seed) for seed in range(4)])
    with torch.no_grad():
        before = inversion_loss(model.representation(x0), model.representation(target))
    with torch.no_grad():
        target_rep = model.representation(target)
    result = pgd(inversion(model, target_rep), x0, eps=1000.0, step_size=0.05, steps=40)
    out = measure(model, result, x0, target, target_rep)
    assert (out["rep_dist_rel"] < 0.5 * before).all()
    torch.testing.assert_close(out["loss_final"], out["rep_dist_rel"], atol=1e-5, rtol=1e-5)


class _Counter(torch.autograd.Function):
    backward_calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _Counter.backward_calls += 1
        return grad


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_one_forward_and_one_input_gradient_per_step(constraint):
    model = small_model()
    forwards = []
    model.stages[0].register_forward_hook(lambda *a: forwards.append(1))
    target_rep = model.representation(torch.rand(3, 3, 12, 12)).detach()
    forwards.clear()
    _Counter.backward_calls = 0
    steps = 7
    pgd(lambda x: inversion_loss(model.representation(_Counter.apply(x)), target_rep), torch.rand(3, 3, 12, 12),
        eps=1.0, step_size=0.1, steps=steps, constraint=constraint)
    assert len(forwards) == steps + 1  # one per step, plus one no-grad forward measuring the returned iterate
    assert _Counter.backward_calls == steps


def test_noise_image_is_the_papers_and_seeded():
    a, b = noise_image((3, 32, 32), 7), noise_image((3, 32, 32), 7)
    assert torch.equal(a, b)
    assert abs(a.mean().item() - 0.5) < 0.01 and 0.03 < a.std().item() < 0.07  # randn/20 + 0.5


def test_bad_arguments_are_refused():
    model = small_model()
    loss_fn = inversion(model, torch.rand(1, 32))
    with pytest.raises(ValueError, match="unknown constraint"):
        pgd(loss_fn, torch.rand(1, 3, 8, 8), eps=1.0, step_size=0.1, steps=1, constraint="l3")
    with pytest.raises(ValueError, match="random_start"):
        pgd(loss_fn, torch.rand(1, 3, 8, 8), eps=1.0, step_size=0.1, steps=1, restarts=2)


def test_capture_off_a_cuda_device_runs_the_same_steps_after_one_logged_line(caplog, monkeypatch):
    """capture=True replays the step as a CUDA graph on a GPU (tests/unit/test_gpu.py); on the CPU the same fixed
    buffers are stepped eagerly: the same iterates, and one warning per process, not one per batch."""
    import robrep.pgd as engine

    monkeypatch.setattr(engine, "_WARNED", set())
    model = small_model()
    x0, target = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        target_rep = model.representation(target)
    plain = pgd(inversion(model, target_rep), x0, eps=2.0, step_size=0.1, steps=12, keep="best")
    with caplog.at_level("WARNING", logger="robrep.pgd"):
        for _ in range(2):
            captured = pgd(inversion(model, target_rep), x0, eps=2.0, step_size=0.1, steps=12, keep="best",
                           capture=True)
    assert torch.equal(captured.x, plain.x) and torch.equal(captured.loss, plain.loss)
    assert [r.getMessage() for r in caplog.records] == [
        "PGD: capture asks for a CUDA device (the batch is on cpu); the steps run eagerly"]


def test_an_objective_keeps_its_step_per_shape_and_later_batches_reuse_it_with_their_own_values():
    """capture=True with an Objective keeps the buffers (on a GPU, the captured graph) per model and shapes: a later
    batch of the same shapes loads its own start, target, radius and step size into them and gets exactly what an
    uncaptured run gets; results never alias the kept buffers; a new shape, mode or precision is a new entry; an
    early stop or a plain closure is never kept."""
    import robrep.pgd as engine
    from robrep.fast import autocast

    model = small_model()
    gen = torch.Generator().manual_seed(3)

    def batch(n):
        x0, target = torch.rand(n, 3, 16, 16, generator=gen), torch.rand(n, 3, 16, 16, generator=gen)
        with torch.no_grad():
            return x0, model.representation(target)

    runs = [(*batch(4), 2.0, 0.1), (*batch(4), 0.5, 0.3), (*batch(4), 1.0, 0.05)]
    plain = [pgd(inversion(model, t), x0, eps=e, step_size=s, steps=9, keep="best") for x0, t, e, s in runs]
    kept = [pgd(inversion(model, t), x0, eps=e, step_size=s, steps=9, keep="best", capture=True)
            for x0, t, e, s in runs]
    for a, b in zip(plain, kept, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.loss, b.loss) and torch.equal(a.steps_taken, b.steps_taken)
    assert len(engine._KEPT[model]) == 1  # three batches, one set of buffers
    assert not torch.equal(kept[0].x, kept[1].x)  # each result is its own copy

    pgd(inversion(model, batch(2)[1]), batch(2)[0], eps=1.0, step_size=0.1, steps=2, capture=True)  # a new shape
    with autocast(torch.device("cpu"), "bf16"):
        pgd(inversion(model, runs[0][1]), runs[0][0], eps=1.0, step_size=0.1, steps=2, capture=True)
    y = torch.arange(4)
    attack = [pgd(untargeted_attack(model, y.roll(i)), runs[i][0], eps=1.0, step_size=0.2, steps=5, restarts=2,
                  random_start=True, generator=torch.Generator().manual_seed(i), capture=capture)
              for capture in (False, True) for i in range(2)]
    assert all(torch.equal(a.x, b.x) for a, b in zip(attack[:2], attack[2:], strict=True))
    assert len(engine._KEPT[model]) == 4
    objective = inversion(model, runs[0][1])
    pgd(objective, runs[0][0], eps=1.0, step_size=0.1, steps=2, capture=True, stop_fn=lambda: torch.zeros(4) > 0)
    pgd(lambda x: objective(x), runs[0][0], eps=1.0, step_size=0.1, steps=2, capture=True)
    assert len(engine._KEPT[model]) == 4


def test_kept_steps_do_not_keep_their_model_alive():
    import gc
    import weakref

    import robrep.pgd as engine

    model = small_model()
    x0 = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        target_rep = model.representation(torch.rand(2, 3, 16, 16))
    pgd(inversion(model, target_rep), x0, eps=1.0, step_size=0.1, steps=2, capture=True)
    assert len(engine._KEPT[model]) == 1
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_a_kind_whose_step_cannot_be_captured_says_so_once_and_runs_eagerly(caplog, monkeypatch):
    """regularized_visualize draws new shifts and rotations from its own generator at every step: a captured step
    would replay the first ones. Asked to capture (FastModel.capture, set here by hand: it is True only when
    compiled on a CUDA device), its batch runs eagerly after one warning per process, with the same rows."""
    import robrep.pgd as engine
    from robrep.fanout.job import BatchContext
    from robrep.fanout.registry import get_kind
    from robrep.fast import FastModel

    monkeypatch.setattr(engine, "_WARNED", set())
    model = small_model()
    images, labels = torch.rand(3, 3, 16, 16), torch.arange(3)
    kind = get_kind("regularized_visualize")
    jobs = [kind.job(model_id="m", dataset="d", split="test", source_index=i, init="gray", coordinate=2,
                     constraint="l2", eps=1000.0, step_size=0.1, steps=6, jitter=1, max_degrees=5.0, rng_seed=0)
            for i in range(3)]

    def rows(capture: bool):
        fast = FastModel(model, "cpu")
        fast.capture = capture
        ctx = BatchContext(model, fast, "cpu", lambda idx: (images[idx], labels[idx]), 3, {}, ("m", "d"))
        return kind.run(ctx, jobs)

    plain = rows(False)
    with caplog.at_level("WARNING", logger="robrep.pgd"):
        asked = [rows(True) for _ in range(2)][-1]
    assert [r["image_png"] for r in asked] == [r["image_png"] for r in plain]
    assert [r.getMessage() for r in caplog.records] == [
        "PGD: regularized_visualize is not captured as a CUDA graph (new random transforms from its own generator "
        "every step); its steps run eagerly"]
