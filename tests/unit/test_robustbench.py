"""RobustBench models by name (robrep/models/robustbench.py): RobustBench's own classes, synthesised checkpoints in
the layouts its loader reads, the same logits, R(x) = the input of the final Linear, and clear errors."""

import collections

import pytest
import torch
from test_wrapped import randomise_batchnorm
from torch import nn

from robrep.checkpoint import import_robustbench, load_checkpoint, save_checkpoint
from robrep.core.errors import CheckpointError, ConfigError
from robrep.fast import fold_batchnorm
from robrep.models import create_model, fake_relu_problem
from robrep.models import robustbench as rb


def reference(dataset: str, threat: str, name: str) -> nn.Module:
    """RobustBench's own network of a model, built by its registry, with random weights and batch-norm statistics."""
    torch.manual_seed(0)
    return randomise_batchnorm(rb.entry(dataset, threat, name)["model"]())


def lacking(state: dict, *names: str) -> dict:
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in names}


# (dataset, threat model, name, image size, the file as published: state -> what torch.save writes). Each layout
# is one RobustBench's loader reads (robustbench/utils.py load_model and _safe_load_state_dict).
PUBLISHED = [
    # WideResNet-28-10 under "state_dict" with DataParallel's prefix (the loader's comment: for Carmon2019Unlabeled)
    ("cifar10", "Linf", "Carmon2019Unlabeled", 32, lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}}),
    # PreAct ResNet-18 with a batch norm before its head, the file without the class's mu/sigma buffers
    ("cifar10", "L2", "Rice2020Overfitting", 32, lambda s: lacking(s, "mu", "sigma")),
    # two snapshots, the loader takes "last"
    ("cifar10", "corruptions", "Kireev2021Effectiveness_RLAT", 32,
     lambda s: {"last": lacking(s, "mu", "sigma"), "best": {}}),
    # ImageNet: normalize_model(torchvision resnet18); the file holds torchvision's keys, no normalizer
    ("imagenet", "Linf", "Salman2020Do_R18", 64, lambda s: {k[len("model."):]: v for k, v in s.items()
                                                           if k.startswith("model.")}),
]


@pytest.mark.parametrize("dataset,threat,name,size,publish", PUBLISHED, ids=[p[2] for p in PUBLISHED])
def test_a_published_file_imports_with_robustbenchs_logits_and_representation(tmp_path, dataset, threat, name, size,
                                                                              publish):
    ref = reference(dataset, threat, name)
    path = tmp_path / "models" / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True)
    torch.save(publish(ref.state_dict()), path)
    model, meta = import_robustbench(tmp_path / "models", name, dataset, threat)
    head = [m for m in ref.modules() if isinstance(m, nn.Linear)][-1]
    seen = []
    head.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0]))
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        logits = ref(x)
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.representation(x), seen[0].flatten(1), rtol=1e-5, atol=1e-5)
    assert meta["arch"] == f"robustbench.{dataset}.{threat}.{name}" and meta["source"] == "robustbench"
    assert meta["mean"] == [0.0] * 3 and meta["std"] == [1.0] * 3  # RobustBench's networks normalise inside
    save_checkpoint(tmp_path / "robrep", model, meta)  # a robrep checkpoint, loaded back as any other
    loaded, _ = load_checkpoint(tmp_path / "robrep")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), logits, rtol=1e-5, atol=1e-5)
        # FastModel's batch-norm folding is exact on it, in float64 (pre-activation blocks add to a convolution's
        # output in place: that batch-norm is not folded)
        model, x = model.double(), x.double()
        folded = fold_batchnorm(model)
        torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(folded.representation(x), model.representation(x), rtol=1e-9, atol=1e-9)


def test_the_fake_relu_applies_where_r_follows_a_relu_and_is_refused_elsewhere():
    model = create_model("robustbench.cifar10.L2.Rice2020Overfitting", 10, [0.0] * 3, [1.0] * 3).eval()
    assert fake_relu_problem(model) is None  # relu(bn(.)), avg_pool, view, linear
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    rep = model.representation(x)
    dead = (rep == 0).nonzero()
    assert len(dead), "a random PreAct ResNet-18 has dead units at this seed"
    row, col = dead[0].tolist()
    assert not torch.autograd.grad(model.representation(x)[row, col], x)[0].any()
    assert torch.autograd.grad(model.representation(x, fake_relu=True)[row, col], x)[0].abs().sum() > 0
    # R of a PreAct ResNet without that batch norm is a residual sum; of a ConvNeXt, a norm's output
    with torch.device("meta"):
        for arch in ("robustbench.cifar10.Linf.Wong2020Fast",
                     "robustbench.imagenet.Linf.Liu2023Comprehensive_ConvNeXt-B"):
            problem = fake_relu_problem(create_model(arch, 1000 if "imagenet" in arch else 10, [0.0] * 3, [1.0] * 3))
            assert problem and "not a ReLU's output" in problem, arch


def test_a_missing_file_says_where_to_put_it_and_how_to_fetch_it(tmp_path):
    with pytest.raises(CheckpointError) as e:
        import_robustbench(tmp_path, "Carmon2019Unlabeled", "cifar10", "Linf")
    message = str(e.value)
    assert f"{tmp_path}/cifar10/Linf/Carmon2019Unlabeled.pt" in message
    assert "load_model('Carmon2019Unlabeled'" in message and rb.entry("cifar10", "Linf", "Carmon2019Unlabeled")[
        "gdrive_id"] in message


def test_bad_names_files_and_layouts_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="did you mean: Carmon2019Unlabeled"):
        import_robustbench(tmp_path, "Carmon2019Unlabelled", "cifar10", "Linf")
    with pytest.raises(CheckpointError, match="unknown dataset 'mnist'"):
        import_robustbench(tmp_path, "Carmon2019Unlabeled", "mnist", "Linf")
    with pytest.raises(CheckpointError, match="unknown threat model 'L1'"):
        import_robustbench(tmp_path, "Carmon2019Unlabeled", "cifar10", "L1")
    with pytest.raises(CheckpointError, match="ensemble of 3 networks"):
        import_robustbench(tmp_path, "Chen2020Adversarial", "cifar10", "Linf")
    with pytest.raises(CheckpointError, match="never downloads"):
        import_robustbench(tmp_path, "Standard_R50", "imagenet", "Linf")  # its builder fetches torchvision's weights
    with pytest.raises(ConfigError, match="has 10 classes"):
        create_model("robustbench.cifar10.Linf.Carmon2019Unlabeled", 100, [0.0] * 3, [1.0] * 3)
    path = tmp_path / "cifar10" / "L2" / "Rice2020Overfitting.pt"
    path.parent.mkdir(parents=True)
    state = reference("cifar10", "L2", "Rice2020Overfitting").state_dict()
    torch.save(lacking(state, "running_var"), path)  # only normalisation constants may be missing
    with pytest.raises(CheckpointError, match="does not match: .*missing .*running_var"):
        import_robustbench(tmp_path, "Rice2020Overfitting", "cifar10", "L2")
    torch.save({"state_dict": {"x": nn.ReLU()}}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        import_robustbench(tmp_path, "Rice2020Overfitting", "cifar10", "L2")


# Models whose RobustBench constructor reads tensor values (`.item()`, a copy), so they cannot be built on the meta
# device; they build on a real one (their weights are hundreds of MB, so not here).
NEEDS_VALUES = {"Kang2021Stable", "Amini2024MeanSparse_Ra_WRN_70_16", "Amini2024MeanSparse_S-WRN-94-16",
                "Amini2024MeanSparse_S-WRN-70-16", "Amini2024MeanSparse_ConvNeXt-L", "Amini2024MeanSparse_Swin-L",
                "Xu2024MIMIR_Swin-B", "Xu2024MIMIR_Swin-L"}


def test_every_model_of_the_zoo_builds_or_is_refused_with_a_reason():
    """Every one of RobustBench's (dataset, threat model, name) entries: a robrep model with R(x) found, or one
    ConfigError that says why not (ensembles, hub-only weights, a non-Linear head). Built on the meta device."""
    outcomes, needs_values = collections.Counter(), set()
    for dataset, by_threat in rb._zoo().items():
        for threat, models in by_threat.items():
            for name in models:
                arch = f"robustbench.{dataset.value}.{threat.value}.{name}"
                try:
                    with torch.device("meta"):
                        model = create_model(arch, rb.DATASETS[dataset.value][1], [0.0] * 3, [1.0] * 3)
                        outcomes["relu" if fake_relu_problem(model) is None else "no fake relu"] += 1
                    assert model.representation_dim > 0
                except ConfigError as e:
                    outcomes[str(e).split(":")[0].split(" is ")[-1][:20]] += 1
                except (RuntimeError, NotImplementedError) as e:
                    assert "meta" in str(e), (arch, e)
                    needs_values.add(name)
    assert needs_values == NEEDS_VALUES
    # measured with robustbench 1.1.1: 206 entries, 170 models (100 where the fake ReLU applies), 27 refused, 9 above
    assert outcomes["relu"] >= 100 and outcomes["relu"] + outcomes["no fake relu"] >= 170, outcomes
