"""Config is validated at the door: unknown keys, wrong types and bad values are ConfigErrors."""

from pathlib import Path

import pytest

from jobs.config import load_config
from robrep.core.config import apply_overrides
from robrep.core.errors import ConfigError

SMOKE = "jobs/configs/digits_smoke.yaml"


CONFIGS = sorted(p.name for p in Path("jobs/configs").glob("*.yaml"))


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load(name):
    config = load_config(f"jobs/configs/{name}")
    assert config.train or config.evaluate or config.zoo


@pytest.mark.parametrize("name", [n for n in CONFIGS if not n.endswith("_smoke.yaml")])
def test_every_preset_has_a_smoke_twin_with_the_same_models(name):
    full, smoke = load_config(f"jobs/configs/{name}"), load_config(f"jobs/configs/{name[:-5]}_smoke.yaml")
    assert [(m.model_id, m.arch, m.attack is None) for m in full.train] == [
        (m.model_id, m.arch, m.attack is None) for m in smoke.train
    ]
    assert all(not m.use_gpu for m in smoke.train) and smoke.ray.address is None
    # a zoo's twin imports every format the preset does (its models are small ones, synthesised)
    def formats(config):
        return {k for spec in config.zoo for k in ("robustness_checkpoint", "state_dict", "robustbench")
                if getattr(spec, k)}
    assert formats(full) <= formats(smoke) and all(spec.gpus_per_shard == 0 for spec in smoke.zoo)
    if full.zoo:
        assert [b.kind for b in full.fanout.jobs] == [b.kind for b in smoke.fanout.jobs]


@pytest.mark.parametrize("name", [n for n in CONFIGS if load_config(f"jobs/configs/{n}").zoo])
def test_every_zoo_model_names_an_architecture_that_builds(name):
    """Each zoo entry's arch (or RobustBench name) builds, on the meta device; the fan-out names only zoo models."""
    import torch

    from robrep.models import create_model, robustbench

    config = load_config(f"jobs/configs/{name}")
    classes = 10 if name.endswith("_smoke.yaml") else 1000
    for spec in config.zoo:
        with torch.device("meta"):
            if spec.robustbench:
                create_model(f"robustbench.{spec.robustbench_dataset}.{spec.threat_model}.{spec.robustbench}",
                             robustbench.DATASETS[spec.robustbench_dataset][1], [0.0] * 3, [1.0] * 3)
            else:
                create_model(spec.arch, classes, [0.5] * 3, [0.25] * 3)
    ids = {spec.model_id or spec.robustbench for spec in config.zoo}
    assert set(config.fanout.models) <= ids
    assert all(set(block.models or ()) <= ids for block in config.fanout.jobs)


def test_paper_presets_carry_the_papers_settings():
    ri = {m.model_id: m for m in load_config("jobs/configs/restricted_imagenet.yaml").train}
    robust = ri["ri_robust_rn50"]
    assert (robust.attack.eps, robust.attack.steps, robust.attack.step_size) == (3.0, 7, 0.5)
    assert (robust.epochs, robust.lr, robust.batch_size, robust.lr_milestones) == (110, 0.1, 256, (30, 60))
    assert (robust.eval_attack.steps, robust.eval_attack.step_size) == (20, 0.375)
    assert ri["ri_standard_rn50"].attack is None


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown config key 'fanout.stepz'"):
        load_config(SMOKE, ["fanout.stepz=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'fanout.jobs\[0\].step'"):
        load_config(SMOKE, ["fanout.jobs=[{kind: invert, step: 3}]"])


def test_unknown_top_level_key_is_named():
    with pytest.raises(ConfigError, match="'learning_rate'"):
        load_config(SMOKE, ["learning_rate=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train=[{model_id: m, attack: {eps: -1.0, steps: 7, step_size: 0.5}}]", "attack.eps=-1.0 must be >= 0"),
        ("train=[{model_id: m, attack: {eps: 1.0, steps: 0, step_size: 0.5}}]", "steps=0 must be within"),
        ("train=[{model_id: m, arch: resnet9000}]", "unknown arch 'resnet9000'"),
        ("fanout.batch_size=ten", "expected an integer"),
        ("fanout.jobs=[{kind: invert, inits: [noise, sketch]}]", "not one of"),
        ("fanout.jobs=[{kind: invert_sweep, radii: []}]", "radii is empty"),
        ("tune.step_size={low: 1.0, high: 0.1}", "0 < low < high"),
        ("data.resolution=2", "data.resolution=2"),
    ],
)
def test_bad_values_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, [override])


def test_overrides_parse_yaml_scalars_without_eval():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2.5", "a.c=__import__('os')"])
    assert data == {"a": {"b": 2.5, "c": "__import__('os')"}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["nonsense"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("jobs/configs/nope.yaml")


def test_set_reaches_a_model_of_the_train_list_by_its_model_id():
    config = load_config(SMOKE, ["train.digits_robust.epochs=3", "train.digits_robust.attack.steps=5",
                                 "fanout.jobs.invert.steps=11", "fanout.jobs.0.step_size=0.2"])
    epochs = {m.model_id: m.epochs for m in config.train}
    assert epochs == {"digits_standard": 8, "digits_robust": 3}
    assert config.train[1].attack.steps == 5 and config.train[1].attack.eps == 1.2  # the rest of the section kept
    assert (config.fanout.jobs[0].steps, config.fanout.jobs[0].step_size) == (11, 0.2)
    with pytest.raises(ConfigError, match=r"no entry 'digits_huge'.*digits_standard"):
        load_config(SMOKE, ["train.digits_huge.epochs=3"])


def test_a_partial_section_keeps_its_other_defaults():
    config = load_config(None, ["store=/tmp/s", "evaluate.model=m", "evaluate.attack.eps=0.5"])
    attack = config.evaluate.attack
    assert (attack.eps, attack.steps, attack.step_size, attack.random_start) == (0.5, 20, 0.375, False)


@pytest.mark.parametrize("raw, message", [
    ("fanout.batch_size=[1", "is not a YAML value"),
    ("fanout.rng_seed=!!python/object/apply:os.system ['true']", "is not a YAML value"),
    ("fanout.jobs.0.eps=.nan", "expected a finite number"),
    ("fanout.jobs.0.steps=3000000000", "steps=3000000000 must be within"),
    ("data.dir=s3://bucket/data", "FFCV reads local or NFS files"),
])
def test_bad_set_values_are_one_clear_error(raw, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, [raw])


def test_every_job_kind_block_is_parsed_by_its_own_spec():
    from robrep.fanout.registry import KINDS

    for name, kind in KINDS.items():
        config = load_config(SMOKE, [f"fanout.jobs=[{{kind: {name}}}]"])
        assert type(config.fanout.jobs[0]) is kind.spec and config.fanout.jobs[0].kind == name


ENTRY_POINTS = ["jobs.build_dataset", "jobs.train", "jobs.fanout", "jobs.main", "jobs.evaluate", "jobs.tune",
                "jobs.report"]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_has_the_same_shape(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).cli(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    for flag in ("--config", "--set", "--verbose", "--from-tune"):
        assert flag in out, (module, flag)
