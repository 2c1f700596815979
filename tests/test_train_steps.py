"""Standard and adversarial training steps on a tiny separable problem."""

import torch

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
