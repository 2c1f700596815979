"""Invariants of the PGD engine and the inversion objective on tiny inputs."""

import pytest
import torch

from robrep.errors import ConfigError
from robrep.experiments import invert, noise_image
from robrep.models import create_model, list_models
from robrep.objectives import inversion_loss
from robrep.pgd import l2_project, l2_step, pgd

MEAN, STD = [0.3, 0.3, 0.3], [0.4, 0.4, 0.4]


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("small_cnn", 10, MEAN, STD, width=8).eval()


def test_l2_step_has_norm_step_size():
    x, grad = torch.rand(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    step = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0]).view(-1, 1, 1, 1)
    moved = (l2_step(x, grad, step) - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(moved, step.flatten())


def test_projection_keeps_ball_and_pixel_range():
    center = torch.rand(4, 3, 8, 8)
    eps = torch.tensor([0.0, 0.1, 1.0, 5.0]).view(-1, 1, 1, 1)
    x = center + torch.randn_like(center) * 3
    projected = l2_project(x, center, eps)
    assert ((projected - center).flatten(1).norm(dim=1) <= eps.flatten() + 1e-5).all()
    assert projected.min() >= 0 and projected.max() <= 1


@pytest.mark.parametrize("random_start", [False, True])
def test_every_iterate_stays_in_the_ball(random_start):
    model = small_model()
    x0, target = torch.rand(6, 3, 12, 12), torch.rand(6, 3, 12, 12)
    eps = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 4.0])
    with torch.no_grad():
        target_rep = model.representation(target)
    seen = []

    def loss_fn(x):
        seen.append(x.detach().clone())
        return inversion_loss(model.representation(x), target_rep)

    pgd(loss_fn, x0, eps=eps, step_size=0.3, steps=8, random_start=random_start)
    assert len(seen) == 9  # 8 steps + the final measurement
    for x in seen:
        assert ((x - x0).flatten(1).norm(dim=1) <= eps + 1e-5).all()
        assert x.min() >= 0 and x.max() <= 1


def test_result_does_not_depend_on_the_batch():
    model = small_model()
    x0, target = torch.rand(5, 3, 12, 12), torch.rand(5, 3, 12, 12)
    alone = invert(model, target[:1], x0[:1], eps=1000.0, step_size=0.1, steps=10)
    batched = invert(model, target, x0, eps=1000.0, step_size=0.1, steps=10)
    torch.testing.assert_close(alone["x"][0], batched["x"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone["rep_dist"][0], batched["rep_dist"][0], atol=1e-5, rtol=1e-5)


def test_inversion_reduces_representation_distance():
    model = small_model()
    target = torch.rand(4, 3, 12, 12)
    x0 = torch.stack([noise_image((3, 12, 12), seed) for seed in range(4)])
    with torch.no_grad():
        before = inversion_loss(model.representation(x0), model.representation(target))
    out = invert(model, target, x0, eps=1000.0, step_size=0.05, steps=40)
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


def test_one_forward_and_one_input_gradient_per_step():
    model = small_model()
    forwards = []
    model.block1.register_forward_hook(lambda *a: forwards.append(1))
    target_rep = model.representation(torch.rand(3, 3, 12, 12)).detach()
    forwards.clear()
    _Counter.backward_calls = 0
    steps = 7
    pgd(lambda x: inversion_loss(model.representation(_Counter.apply(x)), target_rep), torch.rand(3, 3, 12, 12),
        eps=1.0, step_size=0.1, steps=steps)
    assert len(forwards) == steps + 1  # one per step, plus one no-grad forward measuring the returned iterate
    assert _Counter.backward_calls == steps


def test_noise_image_is_the_papers_and_seeded():
    a, b = noise_image((3, 32, 32), 7), noise_image((3, 32, 32), 7)
    assert torch.equal(a, b)
    assert abs(a.mean().item() - 0.5) < 0.01 and 0.03 < a.std().item() < 0.07  # randn/20 + 0.5


@pytest.mark.parametrize("name", list_models())
def test_registered_models_have_representation_and_fake_relu_gradient(name):
    model = create_model(name, 10, MEAN, STD).eval()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    rep = model.representation(x)
    assert rep.shape == (2, model.representation_dim)
    assert model(x).shape == (2, 10)
    # Make every last-layer unit dead: the plain ReLU passes no gradient, the fake one does.
    with torch.no_grad():
        last_bn = model.block3[1]
        last_bn.bias.fill_(-100.0)
    plain = torch.autograd.grad(model.representation(x)[:, 0].sum(), x)[0]
    fake = torch.autograd.grad(model.representation(x, fake_relu=True)[:, 0].sum(), x)[0]
    assert plain.abs().sum() == 0
    assert fake.abs().sum() > 0


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError, match="small_cnn"):
        create_model("resnet9000", 10, MEAN, STD)
