"""Strict config loading: frozen dataclasses built from dicts; unknown keys, wrong types and numbers out of their
declared range are errors.

A number's range lives on its field, where the value is declared: `batch_size: Annotated[int, Bounds(1, 65_536)]`
(or an alias: Count, NonNegative, Positive, Seed). from_dict checks it where the value is read, before any
`validate` (which keeps the checks across fields), and tests read the same declarations to try values outside them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml

from robrep.core.errors import ConfigError

T = TypeVar("T")
MAX_SEED = 2**32  # every rng_seed; derived seeds (one per image slot) must still fit int64


@dataclass(frozen=True)
class Bounds:
    """The range a config number must lie in: low <= value <= high, either end excluded where it says open (None:
    no limit that side). `note` says what an edge value means, for the error line (e.g. "0: no APGD")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def text(self) -> str:
        """'>= 1', '> 0', 'within [1, 65536]', 'within (0, 1)'."""
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"within {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def check(self, value: float, key: str) -> None:
        if not self.admits(value):
            note = f" ({self.note})" if self.note else ""
            raise ConfigError(f"{key}={value!r} must be {self.text()}{note}")


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


Count = Annotated[int, Bounds(1)]  # how many of something, where none makes no sense
NonNegative = Annotated[int, Bounds(0)]  # retries, failures, epochs of warm-up: 0 means none
Positive = Annotated[float, Bounds(0, low_open=True)]  # radii, step sizes, learning rates, CPUs
NonNegativeFloat = Annotated[float, Bounds(0)]  # GPUs (0: none), weight decay
Seed = Annotated[int, Bounds(0, MAX_SEED, high_open=True, note="2**32")]


def distinct(values, key: str, what: str = "value") -> None:
    """A list that names the same thing twice (an image, a radius, a model) would run the same jobs twice: an error."""
    seen: set = set()
    twice = [v for v in values if v in seen or seen.add(v)]
    if twice:
        raise ConfigError(f"{key} lists {twice[0]!r} twice; give each {what} once")


def bounds_of(tp: Any) -> Bounds | None:
    """The Bounds declared on a field's type (looking inside `X | None`), or None."""
    if get_origin(tp) is Annotated:
        return next((m for m in tp.__metadata__ if isinstance(m, Bounds)), None)
    if get_origin(tp) in (typing.Union, types.UnionType):
        return next((b for b in map(bounds_of, get_args(tp)) if b is not None), None)
    return None


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from `data`, raising ConfigError that names the offending key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise ConfigError(f"{where.rstrip('.') or 'config'}: the key {odd[0]!r} is not a name "
                          f"(a {type(odd[0]).__name__}); keys here: {', '.join(sorted(fields))}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {where + unknown[0]!r}; known keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        key = where + name
        if name in data:
            value = data[name]
            default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
            if dataclasses.is_dataclass(default) and isinstance(value, dict):
                value = {**shallow_dict(default), **value}  # a partial section keeps the other defaults
            kwargs[name] = _convert(hints[name], value, key, field.metadata.get("factory"))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {key!r}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _convert(tp: Any, value: Any, key: str, factory=None) -> Any:
    """`value` as type `tp`. factory(value, where): builds each dataclass value instead (a field's metadata
    "factory": a base class whose subclass the value picks, e.g. a fan-out job block by its kind)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        converted = _convert(args[0], value, key, factory)
        bounds = bounds_of(tp)
        if bounds is not None:
            bounds.check(converted, key)
        return converted
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, factory)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{key}[{i}]", factory) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return factory(value, key + ".") if factory else from_dict(tp, value, key + ".")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if not -(2**63) <= value < 2**63:
            raise ConfigError(f"{key}={value} does not fit a 64-bit integer")
        return value
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def shallow_dict(obj: Any) -> dict:
    """A dataclass's fields as a dict, one level deep (nested dataclasses stay objects)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def to_plain(obj: Any) -> Any:
    """A config object as plain YAML/JSON data, every default filled in (for manifests)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _child(node: Any, part: str, dotted: str) -> tuple[Any, Any]:
    """(container, key) for one step of a dotted --set path: a mapping key, a list index, or the list entry
    whose model_id (or kind) is `part`, e.g. train.digits_robust.epochs."""
    if isinstance(node, dict):
        return node, part
    if isinstance(node, list):
        if part.isdigit() and int(part) < len(node):
            return node, int(part)
        for i, item in enumerate(node):
            if isinstance(item, dict) and part in (item.get("model_id"), item.get("kind")):
                return node, i
        names = [item.get("model_id") or item.get("kind") for item in node if isinstance(item, dict)]
        raise ConfigError(f"--set {dotted}: no entry {part!r} in that list; its entries: {names} (or an index)")
    raise ConfigError(f"--set {dotted}: {part!r} is inside a value, not a section of this config")


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a key given twice in one mapping is an error (YAML would keep the last
    value without a word). A `<<` merge key may override what it merges."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader's own error for it follows
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping (first at line {first.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_strict(text: str) -> Any:
    """YAML text as data, like yaml.safe_load, with duplicate keys an error."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass: no object construction


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def set_value(data: dict, dotted: str, value: Any) -> None:
    """data[a][b][c] = value for dotted "a.b.c", creating missing sections (unknown keys are still errors
    when the config is built)."""
    node: Any = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        container, key = _child(node, part, dotted)
        if isinstance(container, dict) and container.get(key) is None:
            container[key] = {}
        node = container[key]
    container, key = _child(node, parts[-1], dotted)
    container[key] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` overrides; values are parsed as YAML scalars (never evaluated as code)."""
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set fanout.batch_size=32")
        dotted, raw = item.split("=", 1)
        try:
            value = load_strict(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {dotted}: {raw!r} is not a YAML value ({yaml_problem(e)}); quote strings") from e
        set_value(data, dotted, value)
    return data


def load_yaml(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a YAML config file into a dict, with overrides applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass --config jobs/configs/<name>.yaml")
    try:
        data = load_strict(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({e.reason}); save it as UTF-8") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {yaml_problem(e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, not {type(data).__name__}")
    # Top-level keys that start with "x-" hold YAML anchors for the sections to share (Compose's convention); they
    # are no section themselves.
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    return apply_overrides(data, list(overrides))
