"""Strict dataclass configs: YAML files plus dotted command-line overrides.

    cfg = load_config(GRFConfig, "configs/model/grf.yaml", ["d_model=128", "modalities.text=384"])

Every key must be a field of the dataclass (nested dataclasses for sections); an unknown key, a
value of the wrong type or a value the dataclass rejects is a `ConfigError` that names the key.
`configs/<kind>/*.yaml` holds the files of each kind listed in `CONFIG_KINDS`.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and the fix."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build `cls` from a YAML file (or its defaults) with `key.sub=value` overrides applied."""
    data = read_yaml(path) if path is not None else {}
    for override in overrides:
        apply_override(data, override)
    return from_dict(cls, data)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass the path of a YAML file, e.g. configs/...")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in nested dict `data`; the value is parsed as YAML (`1e-3`, `[a, b]`, `true`)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not key=value: write e.g. model.d_model=128")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
    node[leaf] = yaml.safe_load(raw)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`, strictly: unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown key {where}{unknown[0]!r} in {cls.__name__}: known keys are {sorted(fields)}")
    values = {name: convert(value, hints[name], f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where or cls.__name__}: {error}") from error


def convert(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against type `hint`, converting where YAML is loose (`1e-3` is a string)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return convert(value, hint, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {convert(k, args[0], key): convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    return convert_scalar(value, hint, key)


def convert_scalar(value: Any, hint: Any, key: str) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint in (str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{key}: {value!r} is not a valid {getattr(hint, '__name__', hint)}")


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-data form of a config (what checkpoints and YAML files hold)."""
    return dataclasses.asdict(config)


# Folder under configs/ -> "module:dataclass" its files describe (imported on use: the trainer's
# and the server's configs live with them).
CONFIG_KINDS = {
    "model": "grf_stream.model:GRFConfig",
    "train": "trainer.config:TrainConfig",
    "serve": "grf_stream.serve:ServeConfig",
}


def config_class(kind: str) -> type:
    module, name = CONFIG_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)
