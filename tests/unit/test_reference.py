"""Equivalence with the reference: our L2 PGD against a loop built on the PyPI `robustness` package's
attack_steps.L2Step (installed by scripts/install.sh), on a fixed model and batch."""

import pytest
import torch

from robrep.models import create_model
from robrep.objectives import untargeted_attack
from robrep.pgd import pgd

attack_steps = pytest.importorskip("robustness.attack_steps", reason="make install puts robustness in the venv")


def reference_l2_pgd(model, x, y, eps, step_size, steps):
    """The robustness library's loop (attacker.py, no random start, last iterate): ascend CE with L2Step."""
    step = attack_steps.L2Step(orig_input=x, eps=eps, step_size=step_size)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    x_adv = x.clone().detach()
    for _ in range(steps):
        x_adv = x_adv.clone().detach().requires_grad_(True)
        loss = loss_fn(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss.mean(), [x_adv])
        with torch.no_grad():
            x_adv = step.project(step.step(x_adv, grad))
    return x_adv.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps, step_size", [(0.5, 0.1), (3.0, 0.5)])
def test_l2_pgd_matches_robustness_l2step(eps, step_size, dtype):
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, [0.3] * 3, [0.3] * 3, width=16).eval().to(dtype)
    x = torch.rand(16, 3, 16, 16, dtype=dtype)
    y = torch.randint(0, 10, (16,))
    expected = reference_l2_pgd(model, x, y, eps, step_size, steps=7)
    ours = pgd(untargeted_attack(model, y), x, eps=eps, step_size=step_size, steps=7).x
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert (ours - x).flatten(1).norm(dim=1).max() > 0.5 * eps  # the attack really moved
