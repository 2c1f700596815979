"""The GPU fast path, checked on the CPU: PGD does no host work per step, batch-norm folding is exact for every
architecture, FastModel (bf16, compiled) computes the model's function, precision names jobs apart, and the quality
guard: bf16 gives the fp32 results on the trained digits pair."""

import copy
from collections import Counter

import pytest
import torch
from test_models import NUMERIC
from torch.utils._python_dispatch import TorchDispatchMode

from robrep.experiments import noise_image
from robrep.fanout.job import Job
from robrep.fanout.plan import pack
from robrep.fanout.registry import get_kind
from robrep.fast import FastModel, conv_bn_pairs, fold_batchnorm
from robrep.models import create_model
from robrep.objectives import Manipulation, inversion
from robrep.pgd import STOP_CHECK_EVERY, pgd
from robrep.train import AttackSpec, adversarial_examples, train_step

MEAN, STD = [0.3, 0.3, 0.3], [0.4, 0.4, 0.4]


class OpLog(TorchDispatchMode):
    """Every aten op run inside, with the devices and sizes of its outputs."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list[tuple[str, int]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        self.ops.append((str(func), [(o.device.type, o.numel()) for o in outs if isinstance(o, torch.Tensor)]))
        return out


def test_pgd_creates_no_host_tensor_when_it_runs_on_a_device():
    """On the meta device (a stand-in for a GPU: no data, no host copies), random starts, steps, projections and
    keep-best make nothing on the CPU: no noise drawn on the host and copied over, no per-step index tensors."""
    with torch.device("meta"):
        model = create_model("small_cnn", 10, MEAN, STD, width=8).eval()
        x0, target = torch.rand(4, 3, 16, 16), torch.rand(4, 32)
    for constraint in ("l2", "linf", "unconstrained"):
        with OpLog() as log:
            result = pgd(inversion(model, target), x0, eps=1.0, step_size=0.1, steps=3, constraint=constraint,
                         random_start=True, restarts=2, keep="best")
        host = [op for op, outs in log.ops if any(d == "cpu" and n > 1 for d, n in outs)]
        assert result.x.device.type == "meta" and host == [], (constraint, host[:5])


def test_pgd_syncs_with_the_host_only_every_few_steps_of_an_early_stop():
    """.item()/.any()/bool() are aten._local_scalar_dense; boolean indexing is aten.nonzero. Without stop_fn a run
    has neither; with one, one sync per STOP_CHECK_EVERY steps, and the stop rule's result is unchanged."""
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, MEAN, STD, width=8).eval()
    x0, target = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        target_rep = model.representation(target)
    with OpLog() as log:
        pgd(inversion(model, target_rep), x0, eps=2.0, step_size=0.1, steps=40, random_start=True, keep="best")
    counts = Counter(op for op, _ in log.ops)
    assert counts["aten._local_scalar_dense.default"] == 0 and counts["aten.nonzero.default"] == 0

    steps = 40
    coordinates = torch.tensor([1, 2, 3, 4])
    manipulation = Manipulation(model, coordinates)
    with OpLog() as log:
        result = pgd(manipulation, x0, eps=1000.0, step_size=0.2, steps=steps, stop_fn=manipulation.done)
    counts = Counter(op for op, _ in log.ops)
    assert counts["aten.nonzero.default"] == 0
    assert 1 <= counts["aten._local_scalar_dense.default"] <= steps // STOP_CHECK_EVERY
    # The stop rule holds where it fired, whenever the host noticed: a done example froze at its step.
    with torch.no_grad():
        rep = model.representation(result.x)
    stopped = result.steps_taken < steps
    assert stopped.any()
    chosen = rep[torch.arange(4), coordinates]
    others = rep.scatter(1, coordinates.view(-1, 1), -float("inf")).max(dim=1).values
    assert bool((chosen > others)[stopped].all())


def test_noise_starts_on_the_cpu_are_the_ones_drawn_before_they_moved_to_the_device():
    """(On CUDA, tests/unit/test_gpu.py checks that they are drawn there.)"""
    expected = (torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(7)) / 20 + 0.5).clamp(0, 1)
    torch.testing.assert_close(noise_image((3, 8, 8), 7), expected, rtol=0, atol=0)


def _random_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Batch-norm statistics and affine parameters far from the identity, so a wrong fold shows."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("arch", NUMERIC)  # the larger ResNets are the same code (test_models.LARGER)
def test_folding_batchnorm_is_exact_for_every_architecture(arch):
    torch.manual_seed(0)
    model = _random_batchnorm(create_model(arch, 10, MEAN, STD).double())
    had = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()), "every batch-norm folded"
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == had, "the model is left as it is"
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        for fake_relu in (False, True):
            torch.testing.assert_close(folded.representation(x, fake_relu=fake_relu),
                                       model.representation(x, fake_relu=fake_relu), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)


def test_fast_model_is_frozen_and_close_to_the_model_in_bf16():
    torch.manual_seed(0)
    model = _random_batchnorm(create_model("cifar_resnet18", 10, MEAN, STD))
    x = torch.rand(4, 3, 32, 32)
    fast32, fast16 = FastModel(model, "cpu", "fp32"), FastModel(model, "cpu", "bf16")
    assert all(p.requires_grad for p in model.parameters()), "the reference model keeps its gradients"
    assert not any(p.requires_grad for p in fast16.parameters())
    with torch.no_grad():
        reference = model.representation(x)
        torch.testing.assert_close(fast32.representation(x), reference, rtol=1e-4, atol=1e-4)
        low = fast16.representation(x)
    assert low.dtype == torch.float32, "bf16 runs inside; outputs come back in fp32"
    assert 0 < (low - reference).norm() / reference.norm() < 0.03
    with pytest.raises(Exception, match="precision='fp16'"):
        FastModel(model, "cpu", "fp16")


def test_compiled_fast_model_computes_the_same_values_and_input_gradients():
    torch.manual_seed(0)
    # float64: in fp32 the compiled kernels round differently from eager's, enough to flip the ReLU mask of a
    # pre-activation within ~1e-6 of zero and move an input gradient by 0.3% on some CPUs (seen on AVX2, not AVX-512)
    model = _random_batchnorm(create_model("small_cnn", 10, MEAN, STD, width=8)).double()
    eager, compiled = FastModel(model, "cpu"), FastModel(model, "cpu", compile=True)
    for batch in (5, 3, 7):  # the batch dimension is dynamic: one compilation for all three
        x = torch.rand(batch, 3, 16, 16, dtype=torch.float64, requires_grad=True)
        grads = []
        for fast in (eager, compiled):
            rep = fast.representation(x, fake_relu=True)
            (grad,) = torch.autograd.grad(rep.square().sum(), x)
            grads.append((rep.detach(), grad, fast(x.detach())))
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_training_attack_runs_frozen_in_bf16_and_leaves_the_model_trainable():
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, MEAN, STD, width=8)
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    attack = AttackSpec(eps=1.0, steps=3, step_size=0.5)
    x_adv = adversarial_examples(model, x, y, attack, precision="bf16")
    assert x_adv.dtype == torch.float32 and model.training
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 1.0 + 1e-4).all()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, correct = train_step(model, optimizer, x, y, attack, precision="bf16")
    assert loss.dim() == 0 and torch.isfinite(loss) and 0 <= int(correct) <= 8


def _job(**changes) -> Job:
    fields = dict(model_id="m", dataset="digits", split="test", target_index=3, init="noise",
                  constraint="l2", eps=1000.0, step_size=0.1, steps=20)
    return get_kind("invert").job(**{**fields, **changes})


def test_precision_is_part_of_a_jobs_identity_except_fp32_whose_ids_stay_as_they_were():
    fp32, bf16, compiled = _job(), _job(precision="bf16"), _job(compile=True)
    assert fp32.job_id == "2f457d208f232a0cdc0aa930", "the id this job had before precision existed (fde6387)"
    assert bf16.job_id != fp32.job_id and compiled.job_id == fp32.job_id
    assert fp32.columns()["precision"] == "fp32" and bf16.columns()["precision"] == "bf16"
    assert len(pack([fp32, bf16, _job(target_index=4)], 10)) == 2, "one batched loop runs one precision"


def test_a_convolution_output_that_is_changed_or_read_elsewhere_is_not_folded():
    """A batch-norm whose input is a convolution's output tensor folds only when nothing else reads or changes that
    tensor: a residual sum added to it in place (pre-activation blocks) or a second reader would see the folded
    values instead."""

    class Net(torch.nn.Module):
        probe_shape = (3, 8, 8)

        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = (torch.nn.Conv2d(3, 3, 3, padding=1) for _ in range(3))
            self.bn_a, self.bn_b, self.bn_c = (torch.nn.BatchNorm2d(3) for _ in range(3))

        def forward(self, x):
            out = self.a(x)
            out += x  # in place: bn_a normalises conv a's output plus x
            y = self.b(x)
            z = self.c(x)
            return self.bn_a(out) + self.bn_b(y) + y + self.bn_c(z)  # y is read twice; z once

    net = _random_batchnorm(Net().double())
    assert conv_bn_pairs(net) == [("c", "bn_c")]
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(net)(x), net(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["timm.resnet18", "robustbench.cifar10.L2.Rice2020Overfitting"])
def test_wrapped_models_run_in_bf16_and_compiled_with_the_fake_relu(arch):
    """A library's network (its R(x) taken by hook, its fake ReLU found by a torch-function mode) through FastModel:
    compiled, the same values and fake-ReLU input gradients as eager; in bf16, within bf16's error."""
    torch.manual_seed(0)
    kwargs = {"image_size": 32} if arch.startswith("timm.") else {}
    model = _random_batchnorm(create_model(arch, 10, MEAN, STD, **kwargs))
    x = torch.rand(3, 3, 32, 32)

    def run(fast, x):
        x = x.clone().requires_grad_(True)
        rep = fast.representation(x, fake_relu=True)
        (grad,) = torch.autograd.grad(rep[:, :8].sum(), x)
        return rep.detach(), grad, fast(x.detach())

    # compiled against eager in float64, where rounding cannot flip a ReLU mask (test above)
    double = copy.deepcopy(model).double()
    eager, compiled = (run(FastModel(double, "cpu", compile=c), x.double()) for c in (False, True))
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    (rep, grad, logits), (rep16, grad16, logits16) = (run(FastModel(model, "cpu", p), x) for p in ("fp32", "bf16"))
    errors = [float((a - b).norm() / a.norm()) for a, b in ((rep, rep16), (logits, logits16))]
    cosine = float(torch.nn.functional.cosine_similarity(grad.flatten(), grad16.flatten(), dim=0))
    # measured at this seed: timm 0.006 / 0.006 relative, gradient cosine 0.986; RobustBench 0.002 / 0.005, 0.999
    print("bf16 against fp32: relative errors of R(x), logits", errors, "gradient cosine", cosine)
    assert max(errors) < 0.05 and cosine > 0.95, (errors, cosine)
