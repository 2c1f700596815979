"""Standard and adversarial training steps on a tiny separable problem."""

import pytest
import torch

from robrep.core.errors import ConfigError
from robrep.models import create_model
from robrep.train import AttackSpec, adversarial_examples, evaluate, train_step


def toy_data(n=64):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 3, 8, 8, generator=g) * 0.2 + y.view(-1, 1, 1, 1) * 0.6
    return x.clamp(0, 1), y


def test_attack_runs_in_eval_mode_and_stays_in_the_ball():
    model = create_model("small_cnn", 2, [0.5] * 3, [0.3] * 3, width=8)
    model.train()
    x, y = toy_data(16)
    bn_mean = model.stages[0][1].running_mean.clone()
    attack = AttackSpec(eps=0.5, steps=3, step_size=0.2)
    x_adv = adversarial_examples(model, x, y, attack)
    assert model.training  # restored
    assert torch.equal(model.stages[0][1].running_mean, bn_mean)  # BN statistics untouched by the attack
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()


def test_attack_lowers_accuracy_and_training_steps_learn():
    torch.manual_seed(0)
    model = create_model("small_cnn", 2, [0.5] * 3, [0.3] * 3, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = toy_data()
    for _ in range(30):
        train_step(model, opt, x, y, attack=None)
    scores = evaluate(model, [(x, y)], AttackSpec(eps=2.0, steps=10, step_size=0.5, random_start=False))
    assert scores["clean_acc"] == 1.0
    assert scores["adv_acc"] < scores["clean_acc"]
    loss, correct = train_step(model, opt, x, y, attack=AttackSpec(eps=0.3, steps=2, step_size=0.2))
    assert loss > 0 and 0 <= correct <= len(y)


def test_translate_shifts_each_image_by_its_own_seeded_offset():
    """The seeded augmentation: a random crop of the zero-padded image, the same for the same (seed, epoch, rank),
    another for another epoch; content moves by whole pixels and zeros fill in."""
    from robrep.augment import epoch_generator, translate

    x = torch.zeros(16, 1, 8, 8)
    x[:, :, 3, 4] = 1.0  # one bright pixel
    a = translate(x, 2, epoch_generator(0, 0, 0))
    assert torch.equal(a, translate(x, 2, epoch_generator(0, 0, 0)))
    assert not torch.equal(a, translate(x, 2, epoch_generator(0, 1, 0)))
    assert not torch.equal(a, translate(x, 2, epoch_generator(0, 0, 1)))
    for image in a:
        rows, cols = torch.nonzero(image[0], as_tuple=True)
        assert len(rows) == 1 and abs(int(rows[0]) - 3) <= 2 and abs(int(cols[0]) - 4) <= 2
    assert len({tuple(torch.nonzero(image[0])[0].tolist()) for image in a}) > 3  # offsets differ per image


def test_small_cnn_depth_pool_and_channels():
    from robrep.models import create_model
    from robrep.train import ModelSpec

    model = create_model("small_cnn", 10, [0.3], [0.3], width=8, depth=4, pool=2)
    assert model.representation(torch.rand(3, 1, 16, 16)).shape == (3, 32 * 4) == (3, model.representation_dim)
    assert len(model.stages) == 4 and model.stages[0][0].in_channels == 1
    spec = ModelSpec("m", width=8, depth=0, pool=2)
    assert (spec.at(16).depth, spec.at(24).depth, spec.at(8).depth) == (4, 5, 3)  # down to 2x2 pixels
    wide = create_model("small_cnn", 10, [0.3], [0.3], **spec.at(24).arch_kwargs)
    assert wide.representation(torch.rand(2, 1, 24, 24)).shape == (2, 128)
    with pytest.raises(ConfigError, match="RGB"):
        create_model("resnet18", 10, [0.3], [0.3])


def test_attack_warmup_ramps_eps_and_step_over_the_first_part_of_training():
    from robrep.train import AttackSpec, ModelSpec

    attack = AttackSpec(eps=1.2, steps=7, step_size=0.43, at_resolution=16)
    assert attack.at(24).eps == pytest.approx(1.8) and attack.at(24).step_size == pytest.approx(0.645)
    spec = ModelSpec("m", attack=attack, attack_warmup=0.3)
    ramp = [spec.attack_at(step, 100) for step in (0, 14, 29, 30, 99)]
    assert [round(a.eps, 4) for a in ramp] == [0.04, 0.6, 1.2, 1.2, 1.2]
    assert ramp[1].step_size == pytest.approx(0.215) and ModelSpec("s").attack_at(0, 100) is None


def test_onecycle_and_cosine_step_per_batch_and_adam_is_built():
    from robrep.train import ModelSpec, make_optimizer, make_scheduler, step_per_batch

    model = torch.nn.Linear(2, 2)
    for schedule in ("onecycle", "cosine"):
        spec = ModelSpec("m", optimizer="adam", lr=3e-3, schedule=schedule, epochs=4)
        optimizer = make_optimizer(spec, model.parameters())
        scheduler = make_scheduler(optimizer, spec, steps_per_epoch=10)
        lrs = []
        for _ in range(40):
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        assert isinstance(optimizer, torch.optim.Adam) and step_per_batch(spec)
        assert max(lrs) <= 3e-3 * 1.0001 and lrs[-1] < 3e-4, (schedule, lrs[-3:])
    assert not step_per_batch(ModelSpec("m"))
