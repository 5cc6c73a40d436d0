"""Declarative validation of YAML configs into frozen dataclasses.

A config section is a dataclass whose fields carry their constraints in ``field(metadata=...)``:
``positive`` (> 0), ``nonneg`` (>= 0), ``choices`` (allowed values), ``range`` (inclusive bounds).
``load_section`` checks unknown keys, missing keys, types and constraints and raises ``ConfigError``
with a message that names the file and the dotted key, so the CLI can print one line and exit 2.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file (or dict) is wrong; the message names where and how to fix it."""


def spec(default=dataclasses.MISSING, *, positive=False, nonneg=False, choices=None, range=None,
         help: str = "", default_factory=dataclasses.MISSING):
    """A dataclass field with validation metadata."""
    meta = {"positive": positive, "nonneg": nonneg, "choices": choices, "range": range, "help": help}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str, source: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where, source)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where} must be a mapping (got {value!r})")
        return load_section(tp, value, source, prefix=where + ".")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {where} must be a list (got {value!r})")
        items = [_coerce(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where} must be a mapping (got {value!r})")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {where} must be a number (got {value!r})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {where} must be an integer (got {value!r})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {where} must be true or false (got {value!r})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {where} must be a string (got {value!r})")
        return value
    return value


def _check(value, meta: dict, where: str, source: str):
    if value is None or isinstance(value, (dict, list, tuple)) or dataclasses.is_dataclass(value):
        return
    if meta.get("positive") and not value > 0:
        raise ConfigError(f"{source}: {where} must be > 0 (got {value})")
    if meta.get("nonneg") and not value >= 0:
        raise ConfigError(f"{source}: {where} must be >= 0 (got {value})")
    if meta.get("choices") is not None and value not in meta["choices"]:
        allowed = ", ".join(map(str, meta["choices"]))
        raise ConfigError(f"{source}: {where} must be one of {allowed} (got {value!r})")
    if meta.get("range") is not None:
        lo, hi = meta["range"]
        if not lo <= value <= hi:
            raise ConfigError(f"{source}: {where} must be in [{lo}, {hi}] (got {value})")


def load_section(cls, data: dict, source: str = "<config>", prefix: str = ""):
    """Build dataclass ``cls`` from ``data``; every problem raises ConfigError naming source and key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(fields)
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (known keys here: {known})")
    kwargs = {}
    for name, f in fields.items():
        where = prefix + name
        if name in data:
            value = _coerce(data[name], hints[name], where, source)
            _check(value, f.metadata, where, source)
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing key '{where}'")
    try:
        obj = cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return obj


def to_dict(obj) -> dict:
    """Plain-python dict of a (nested) config dataclass, suitable for YAML/JSON and torch checkpoints."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj)
