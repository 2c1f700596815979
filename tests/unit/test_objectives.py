"""The paper's objectives do what their equations say."""

import pytest
import torch

from robrep.models import create_model
from robrep.objectives import (
    Manipulation,
    interpolation_lams,
    interpolation_targets,
    regularized_visualization,
    untargeted_attack,
    visualization,
)
from robrep.pgd import pgd

MEAN, STD = [0.3] * 3, [0.4] * 3


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("small_cnn", 10, MEAN, STD, width=8).eval()


def test_visualization_raises_its_coordinate(model):
    x0 = torch.rand(4, 3, 12, 12)
    coords = torch.tensor([0, 5, 17, 31])
    before = model.representation(x0)[torch.arange(4), coords]
    result = pgd(visualization(model, coords), x0, eps=1000.0, step_size=0.2, steps=20)
    after = model.representation(result.x)[torch.arange(4), coords]
    assert (after > before + 0.1).all()


def test_regularized_visualization_raises_its_coordinate_too(model):
    x0 = torch.rand(2, 3, 16, 16)
    coords = torch.tensor([3, 9])
    before = model.representation(x0)[torch.arange(2), coords]
    generator = torch.Generator().manual_seed(0)
    loss = regularized_visualization(model, coords, jitter=2, max_degrees=10, generator=generator)
    result = pgd(loss, x0, eps=1000.0, step_size=0.2, steps=20)
    after = model.representation(result.x)[torch.arange(2), coords]
    assert (after > before).all()


def test_manipulation_stops_by_the_papers_rule_and_records_steps(model):
    x0 = torch.rand(6, 3, 12, 12)
    rep0 = model.representation(x0)
    coords = rep0.argsort(dim=1)[:, 8]  # a low coordinate, so the rule is not met at the start
    objective = Manipulation(model, coords)
    result = pgd(objective, x0, eps=1000.0, step_size=0.1, steps=300, stop_fn=objective.done)
    rep = model.representation(result.x)
    rows = torch.arange(6)
    chosen = rep[rows, coords]
    others = rep.clone()
    others[rows, coords] = -float("inf")
    stopped = result.steps_taken < 300
    assert stopped.all(), result.steps_taken
    assert (chosen > others.max(dim=1).values).all()  # it exceeds every other coordinate...
    assert (result.steps_taken > 0).all()
    # ...and one step earlier it did not: rerun each example for steps_taken - 1 steps.
    for i in range(6):
        shorter = pgd(Manipulation(model, coords[i : i + 1]), x0[i : i + 1], eps=1000.0, step_size=0.1,
                      steps=int(result.steps_taken[i]) - 1)
        r = model.representation(shorter.x)[0]
        assert r[coords[i]] <= r[torch.arange(r.numel()) != coords[i]].max()


def test_interpolation_targets_are_eq6():
    r1, r2 = torch.randn(3, 8), torch.randn(3, 8)
    lams = torch.tensor([0.0, 0.25, 1.0])
    out = interpolation_targets(r1, r2, lams)
    torch.testing.assert_close(out[0], r2[0])
    torch.testing.assert_close(out[1], 0.25 * r1[1] + 0.75 * r2[1])
    torch.testing.assert_close(out[2], r1[2])
    torch.testing.assert_close(interpolation_lams(4), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def targeted_attack(model, targets):
    """CE(logits, t): minimising it pushes the prediction to class t (a check of pgd, not a product objective)."""
    return lambda x: torch.nn.functional.cross_entropy(model(x), targets, reduction="none")


def test_untargeted_and_targeted_attacks_move_predictions(model):
    x = torch.rand(8, 3, 12, 12)
    y = model(x).argmax(1)
    result = pgd(untargeted_attack(model, y), x, eps=1000.0, step_size=0.2, steps=30)
    assert (model(result.x).argmax(1) != y).float().mean() > 0.5
    target = model(x).argsort(dim=1)[:, -2]  # each example's runner-up class
    before = targeted_attack(model, target)(x)
    result = pgd(targeted_attack(model, target), x, eps=1000.0, step_size=0.2, steps=30)
    assert (result.loss < before).all()
    assert (model(result.x).argmax(1) == target).float().mean() > 0.5


def test_tuning_problems_measure_what_they_minimise(model):
    from robrep.experiments import tuning_problem

    images, labels = torch.rand(6, 3, 12, 12), torch.randint(0, 10, (6,))
    labels = model(images).argmax(1)  # all correct at the start
    loss_fn, x0, measure = tuning_problem(model, images, labels, "attack")
    assert measure(x0) == 1.0
    attacked = pgd(loss_fn, x0, eps=1000.0, step_size=0.2, steps=30).x
    assert measure(attacked) < 1.0  # a stronger attack scores lower
    loss_fn, x0, measure = tuning_problem(model, images, labels, "inversion")
    before = measure(x0)
    assert measure(pgd(loss_fn, x0, eps=1000.0, step_size=0.05, steps=30).x) < before
    with pytest.raises(ValueError, match="unknown tuning objective"):
        tuning_problem(model, images, labels, "beauty")
