"""Frozen keyword-only config dataclasses, built strictly from mappings (YAML, CLI, NNI parameters).

A key that is not a field is an error naming the key (and the closest field), never silently
ignored; values are coerced to the field's declared type (``int``, ``float``, ``bool``, ``str``,
``tuple[...]``, ``Optional[...]``) and rejected with the field's name when they do not fit.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Mapping

from .errors import UserError

__all__ = ["build_config", "parse_cli_overrides", "config_to_dict", "load_yaml"]


def _coerce(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{name}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{name}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # ``--hidden 64`` is a one-element list
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{name}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(name, v, args[0]) for v in value)
        if origin is tuple and args:
            if len(args) != len(value):
                raise UserError(f"{name}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(name, v, a) for v, a in zip(value, args))
        return tuple(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise UserError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise UserError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{name}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{name}: expected a number, got {value!r}") from None
        if math.isnan(out):
            raise UserError(f"{name}: NaN is not allowed")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise UserError(f"{name}: expected a mapping, got {value!r}")
        return build_config(tp, value, prefix=f"{name}.")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def build_config(cls: type, mapping: Mapping[str, Any] | None = None, *, prefix: str = "", **overrides: Any):
    """Build dataclass ``cls`` from ``mapping`` (+ ``overrides``), rejecting unknown keys.

    The dataclass's ``__post_init__`` may raise :class:`UserError` for range checks.
    """
    data = dict(mapping or {})
    data.update(overrides)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown config key '{prefix}{k}'{hint}; valid keys: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(prefix + k, v, hints[k]) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field missing
        raise UserError(f"{cls.__name__}: {exc}") from None


def parse_cli_overrides(argv: list[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / ``--flag`` pairs -> dict (dashes in keys become underscores).

    Values are YAML-parsed (so ``--epochs 3`` is an int and ``--scopes s,m`` stays a string).
    """
    import yaml

    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise UserError(f"unexpected argument '{tok}' (options are --key value)")
        key = tok[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw = argv[i + 1]
            i += 2
        else:
            raw = "true"
            i += 1
        key = key.replace("-", "_")
        if not key:
            raise UserError(f"empty option '{tok}'")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key] = raw
        if out[key] is None and raw.strip() == "":
            out[key] = raw
    return out


def config_to_dict(cfg) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def load_yaml(path) -> dict[str, Any]:
    """A YAML file holding a mapping; a missing file, bad YAML or another top level is a UserError."""
    from pathlib import Path

    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data
