"""Config is validated at the door: unknown keys, wrong types and bad values are ConfigErrors."""

import pytest

from jobs.config import load_config
from robrep.config import apply_overrides
from robrep.errors import ConfigError

SMOKE = "jobs/configs/digits_smoke.yaml"


def test_shipped_configs_load():
    for name in ("digits.yaml", "digits_smoke.yaml"):
        config = load_config(f"jobs/configs/{name}")
        assert {m.model_id for m in config.train} == {"digits_standard", "digits_robust"}


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown config key 'fanout.stepz'"):
        load_config(SMOKE, ["fanout.stepz=3"])


def test_unknown_top_level_key_is_named():
    with pytest.raises(ConfigError, match="'learning_rate'"):
        load_config(SMOKE, ["learning_rate=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train=[{model_id: m, attack: {eps: -1.0, steps: 7, step_size: 0.5}}]", "eps=-1.0 must be >= 0"),
        ("train=[{model_id: m, attack: {eps: 1.0, steps: 0, step_size: 0.5}}]", "steps=0 must be >= 1"),
        ("train=[{model_id: m, arch: resnet9000}]", "unknown arch 'resnet9000'"),
        ("fanout.steps=ten", "expected an integer"),
        ("fanout.inits=[noise, sketch]", "not one of"),
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
