"""A small declarative checker for nested YAML configs: every key known, every value checked, defaults filled.

Why: NeuroVFM-shaped configs are deep (``system.params.model_hyperparams.pooler_cf.params.W_out``); a typo must
fail naming the dotted key, and a bad value must say which key and why, before any data is read.

A schema is a dict ``{key: spec}``; a spec is a nested schema dict, ``Map(spec)`` (free keys, checked values), or a
leaf ``Field(check, default=REQUIRED)`` whose ``check(value, key)`` returns the normalised value or raises
``ConfigError``. ``validate(data, schema, where)`` returns a plain nested dict.
"""
from __future__ import annotations

from typing import Any, Callable

REQUIRED = object()


class ConfigError(ValueError):
    """A bad training config; the message is ``<key>: <reason>`` (the CLI prefixes the file)."""


class Field:
    def __init__(self, check: Callable[[Any, str], Any], default: Any = REQUIRED):
        self.check, self.default = check, default


class Map:
    """A mapping with free keys (e.g. ``mode_mapping``: study -> modality) whose values follow ``spec``."""

    def __init__(self, spec, required: bool = True):
        self.spec, self.required = spec, required


def validate(data: Any, schema: dict, where: str = "") -> dict:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or '<top>'}: expected a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in schema]
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown config key (known under {where or 'the top level'}: "
                          f"{sorted(schema)})")
    out = {}
    for key, spec in schema.items():
        path = _join(where, key)
        out[key] = _one(data.get(key, REQUIRED) if key in data else REQUIRED, spec, path)
    return out


def _one(value, spec, path):
    if isinstance(spec, dict):
        return validate(None if value is REQUIRED else value, spec, path)
    if isinstance(spec, Map):
        if value is REQUIRED or value is None:
            if spec.required:
                raise ConfigError(f"{path}: required")
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {str(k): _one(v, spec.spec, _join(path, str(k))) for k, v in value.items()}
    if value is REQUIRED:
        if spec.default is REQUIRED:
            raise ConfigError(f"{path}: required")
        return spec.default
    return spec.check(value, path)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


# ------------------------------------------------------------------------------------------------ leaf checks
def optional(check):
    return lambda v, k: None if v is None else check(v, k)


def integer(lo: int | None = None):
    def check(v, k):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{k}: expected an integer, got {v!r}")
        if lo is not None and v < lo:
            raise ConfigError(f"{k}: must be >= {lo}, got {v}")
        return v
    return check


def number(lo: float | None = None, hi: float | None = None, hi_open: bool = False):
    def check(v, k):
        if isinstance(v, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                raise ConfigError(f"{k}: expected a number, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{k}: expected a number, got {v!r}")
        if lo is not None and v < lo or hi is not None and (v >= hi if hi_open else v > hi):
            raise ConfigError(f"{k}: must be in [{lo}, {hi}{')' if hi_open else ']'}, got {v}")
        return float(v)
    return check


def boolean(v, k):
    if not isinstance(v, bool):
        raise ConfigError(f"{k}: expected true or false, got {v!r}")
    return v


def string(v, k):
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{k}: expected a non-empty string, got {v!r}")
    return v


def choice(*options, aliases: dict | None = None):
    def check(v, k):
        v2 = (aliases or {}).get(v, v)
        if v2 not in options:
            raise ConfigError(f"{k}: {v!r} is not one of {list(options) + sorted(map(str, aliases or {}))}")
        return v2
    return check


def seq(item_check, length: int | None = None, min_len: int = 0):
    def check(v, k):
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{k}: expected a list, got {v!r}")
        if length is not None and len(v) != length:
            raise ConfigError(f"{k}: expected {length} values, got {len(v)}")
        if len(v) < min_len:
            raise ConfigError(f"{k}: expected at least {min_len} value(s)")
        return [item_check(x, f"{k}[{i}]") for i, x in enumerate(v)]
    return check


def anything(v, k):
    return v


def mapping(v, k):
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{k}: expected a mapping, got {v!r}")
    return dict(v)
