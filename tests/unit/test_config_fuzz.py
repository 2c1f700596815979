"""Property-style checks of the config loader: every field of every config section (each fan-out kind's block
included), fed wrong types, values outside its declared range and seeded random values, gives a ConfigError that
names the field, or loads; never another exception. Mutated YAML text of a shipped config likewise."""

import dataclasses
import math
import pickle
import random
import types
import typing
from typing import Annotated, Literal, get_args, get_origin

from jobs.config import ExperimentConfig
from robrep.core.config import Bounds, bounds_of, from_dict, load_yaml, set_value
from robrep.core.errors import ConfigError
from robrep.fanout.registry import KINDS

SMOKE = "jobs/configs/digits_smoke.yaml"


def base() -> dict:
    """The smoke config with every section present: a block of every kind, evaluate, build and a zoo entry."""
    data = load_yaml(SMOKE)
    data["fanout"]["jobs"] = [b for b in data["fanout"]["jobs"] if b["kind"] != "representations"]
    data["fanout"]["jobs"].append({"kind": "representations"})
    data["evaluate"] = {"model": "digits_robust", "mean": [0.5], "std": [0.25], "max_images": 10,
                        "attack": {"eps": 1.0, "steps": 2, "step_size": 0.5, "at_resolution": 16}}
    data["build"] = {"source": "synthetic", "out": "/tmp/robrep-fuzz/x.beton", "max_resolution": 32}
    data["zoo"] = [{"model": "digits_standard", "model_id": "zoo_standard"}]
    data["ray"]["num_cpus"] = 2
    data["train"][0]["eval_max_images"] = 50
    data["train"][0]["lr_milestones"] = [2, 4]
    return data


def _strip(tp):
    """(the type without Optional and Annotated, whether None is allowed)."""
    optional = False
    if get_origin(tp) in (typing.Union, types.UnionType):
        optional = type(None) in get_args(tp)
        tp = next(a for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp, optional


def fields(cls, node: dict, dotted: str):
    """(dotted key, declared type, optional) of every field reachable from `cls` through `node` (the base config's
    data for it); list entries by index."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp, optional = _strip(hints[f.name])
        key = f"{dotted}{f.name}"
        yield key, hints[f.name], optional
        value = node.get(f.name) if isinstance(node, dict) else None
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            yield from fields(tp, value, key + ".")
        elif get_origin(tp) is tuple and isinstance(value, list):
            inner, _ = _strip(get_args(tp)[0])
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    spec = KINDS[item["kind"]].spec if "kind" in item else inner
                    yield from fields(spec, item, f"{key}.{i}.")


def numbers(tp) -> tuple[type | None, Bounds | None]:
    """(int or float, its Bounds) of a number field or a list of numbers; (None, None) otherwise."""
    bare, _ = _strip(tp)
    if get_origin(bare) is tuple:
        return numbers(get_args(bare)[0])
    if bare in (int, float):
        return bare, bounds_of(tp)
    return None, None


BASE = base()
FIELDS = list(fields(ExperimentConfig, BASE, ""))


def fresh() -> dict:
    """A private copy of BASE (pickle: five times deepcopy's speed)."""
    return pickle.loads(PICKLED)


PICKLED = pickle.dumps(BASE)


def load(data: dict):
    return from_dict(ExperimentConfig, data)


def outside(kind: type, bounds: Bounds) -> list:
    """Values just outside each end of `bounds`, and far outside."""
    step = 1 if kind is int else 1e-6
    out = []
    if bounds.low is not None:
        low = kind(bounds.low) if kind is int else float(bounds.low)
        out += [low if bounds.low_open else low - step, low - 10**6]
    if bounds.high is not None:
        high = kind(bounds.high) if kind is int else float(bounds.high)
        out += [high if bounds.high_open else high + step, high + 10**9]
    return out


def wrong_types(tp, optional: bool) -> list:
    """Values of the wrong type for a field of type tp."""
    bare, _ = _strip(tp)
    values = [{"a": 1}, [{"b": [1]}], "x" * 3]
    if not optional:
        values.append(None)
    if bare is bool:
        return values + [1, 0.5, "true"]
    if bare is int:
        return values + [True, 1.5, "3", 2**70, [3]]
    if bare is float:
        return values + [False, math.nan, math.inf, -math.inf, "0.5", [0.5]]
    if bare is str:
        return [v for v in values if not isinstance(v, str)] + [3, 2.5, True, ["a"]]
    if get_origin(bare) is Literal:
        return [v for v in values if v is not None or not optional] + ["nope", 7, [get_args(bare)[0]]]
    if get_origin(bare) is tuple:
        element = wrong_types(get_args(bare)[0], False)
        return [v for v in values if not isinstance(v, list)] + [3, "abc", [element[0]], [element[-1]]]
    if dataclasses.is_dataclass(bare):
        return [v for v in values if not isinstance(v, dict)] + [3, "x", [1, 2]]
    raise AssertionError(f"no wrong values for {tp}")


def test_the_base_config_loads_and_every_section_and_kind_is_walked():
    config = load(fresh())
    assert {b.kind for b in config.fanout.jobs} == set(KINDS)
    walked = {key.split(".")[0] for key, _, _ in FIELDS}
    assert walked == {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert len(FIELDS) > 300, len(FIELDS)  # 9 kinds' blocks, 2 models with attacks, tune, evaluate, build, zoo


def test_every_number_in_the_config_declares_its_range():
    unbounded = [key for key, tp, _ in FIELDS if numbers(tp)[0] and numbers(tp)[1] is None]
    assert not unbounded, f"declare a Bounds on these fields (robrep/core/config.py): {unbounded}"


def problems_of(key: str, values, check) -> list[str]:
    """Each value set at `key` must be a ConfigError whose message passes check(message); what went otherwise."""
    out = []
    for value in values:
        data = fresh()
        set_value(data, key, value)
        try:
            load(data)
            out.append(f"{key}={value!r} loaded")
        except ConfigError as e:
            if not check(str(e)):
                out.append(f"{key}={value!r}: the message does not name it: {e}")
        except Exception as e:  # noqa: BLE001 - what this test looks for
            out.append(f"{key}={value!r}: {type(e).__name__}: {e}")
    return out


def test_a_number_outside_its_range_is_a_config_error_naming_it():
    problems, tried = [], 0
    for key, tp, _ in FIELDS:
        kind, bounds = numbers(tp)
        if kind is None or bounds is None:
            continue
        is_list = get_origin(_strip(tp)[0]) is tuple
        values = [[v] if is_list else v for v in outside(kind, bounds)]
        tried += len(values)
        problems += problems_of(key, values, lambda m, k=key, b=bounds: k.split(".")[-1] in m and b.text() in m)
    assert not problems, "\n".join(problems)
    assert tried > 250, tried


def test_a_value_of_the_wrong_type_is_a_config_error_naming_it():
    problems, tried = [], 0
    for key, tp, optional in FIELDS:
        values = wrong_types(tp, optional)
        tried += len(values)
        names = key.split(".")[-1], key.split(".")[-2] if "." in key else key
        problems += problems_of(key, values, lambda m, n=names: n[0] in m or n[1] in m)
    assert not problems, "\n".join(problems)
    assert tried > 2000, tried


def random_value(rng: random.Random):
    choice = rng.randrange(9)
    if choice == 0:
        return rng.randint(-(2**40), 2**40)
    if choice == 1:
        return rng.choice([-1, 0, 1, 2, 3, 7, 64, 10**5])
    if choice == 2:
        return rng.uniform(-1e3, 1e3)
    if choice == 3:
        return rng.choice([0.0, -0.0, 1e-300, -1e300, 1e300, math.nan, math.inf])
    if choice == 4:
        return "".join(rng.choice("ab/._ -~!0") for _ in range(rng.randrange(6)))
    if choice == 5:
        return rng.choice([True, False, None])
    if choice == 6:
        return [random_value(rng) for _ in range(rng.randrange(3))]
    if choice == 7:
        return {rng.choice(["mode", "n", "kind", "eps", 1, None]): random_value(rng) for _ in range(rng.randrange(3))}
    return rng.choice(["first", "list", "l2", "linf", "invert", "fp32", "small_cnn"])


def test_random_values_in_every_field_load_or_are_a_config_error():
    """1500 seeded trials: one to three fields set to random values at once."""
    rng = random.Random(25)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(1500):
        data = fresh()
        try:
            for key, _, _ in rng.sample(FIELDS, rng.randint(1, 3)):
                set_value(data, key, random_value(rng))
            load(data)
            outcomes["loaded"] += 1
        except ConfigError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 1000, outcomes  # nearly every random value is wrong; some are not


def test_mutated_yaml_text_loads_or_is_a_config_error(tmp_path):
    """400 seeded mutations of the smoke config's text (characters deleted, doubled, swapped for YAML's own
    punctuation): each loads or is one ConfigError."""
    text = open(SMOKE, encoding="utf-8").read()
    rng = random.Random(2025)
    path = tmp_path / "mutated.yaml"
    refused_count = 0
    for _ in range(400):
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(chars))
            op = rng.randrange(3)
            if op == 0:
                del chars[i]
            elif op == 1:
                chars.insert(i, chars[i])
            else:
                chars[i] = rng.choice(":-[]{},#&*!|>'\"%@` \n\t0")
        path.write_text("".join(chars), encoding="utf-8")
        try:
            load(load_yaml(path))
        except ConfigError:
            refused_count += 1
    assert refused_count > 100, refused_count
