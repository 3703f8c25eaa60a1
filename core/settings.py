"""The strict codec of every settings dataclass (Plan, TrainConfig, AugmentProfile, ...): JSON-like
values converted from the type hints, every field required on reading, an unknown or missing key
an error naming it; one canonical JSON and one hash; command-line ``key=value`` parsing.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np

# keys added to a format version after files were written with it: absent -> this default
ADDED_KEYS: dict[str, dict[str, Any]] = {
    "Plan": {"resampling": "cubic"},
    "TrainConfig": {"upkern_fold": None, "early_stop": None, "warmup_epochs": 0, "focal_gamma": None,
                    "focal_alpha": None, "time_budget_min": None},
    "DataSelection": {"max_cases": None, "sample_seed": 0, "select": None, "drop_worst": None,
                      "drop_worst_by": None},
}

# ----------------------------------------------------------------------------------------------
# generic strict conversion between dataclasses and JSON-like values, driven by the type hints
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` (lists -> tuples, numpy scalars -> Python scalars,
    mappings -> dataclasses), raising ``ValueError`` that names ``where`` on a mismatch."""
    if tp is Any:  # free-form JSON (builder arguments): checked by whoever consumes it
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        assert len(options) == 1, f"unsupported union {tp}"
        return _coerce(value, options[0], where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _from_mapping(tp, value, where)
        raise ValueError(f"{where}: expected an object for {tp.__name__}, got {value!r}")
    if origin is dict:
        key_tp, val_tp = args
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(items))
        if len(items) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(items)} ({value!r})")
        return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(items, args)))
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            if not math.isfinite(float(value)):
                raise ValueError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    raise AssertionError(f"unsupported field type {tp!r} at {where}")


def _from_mapping(cls: type, data: Mapping, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``: every field required (except those added after
    plans were first written, which take their default), no unknown key."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, data)) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (valid keys: {', '.join(names)})")
    data = {**{k: v for k, v in ADDED_KEYS.get(cls.__name__, {}).items() if k not in data}, **data}
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(f"{where}: missing required key {missing[0]!r}")
    try:
        return cls(**{n: data[n] for n in names})
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def _coerce_fields(obj: Any) -> None:
    """Normalise the fields of a frozen dataclass instance in place (used in __post_init__)."""
    cls = type(obj)
    for f in dataclasses.fields(cls):
        value = _coerce(getattr(obj, f.name), _hints(cls)[f.name], f"{cls.__name__}.{f.name}")
        object.__setattr__(obj, f.name, value)


# the codec every settings dataclass of the project uses (Plan, TrainConfig, ...)
def from_mapping(cls: type, data: Mapping, where: str) -> Any:
    """Build settings dataclass ``cls`` from a JSON object, strictly (see ``_from_mapping``)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    return _from_mapping(cls, data, where)


coerce_fields = _coerce_fields


class Settings:
    """Mixin of a frozen settings dataclass: fields normalised from their type hints on
    construction (lists -> tuples, numpy scalars -> Python), then ``validate``; ``to_dict`` /
    ``from_dict`` through the strict codec above (unknown and missing keys are errors)."""

    def __post_init__(self) -> None:
        _coerce_fields(self)
        self.validate()

    def validate(self) -> None:
        """Checks beyond the types; subclasses raise ValueError naming the field."""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping, where: str | None = None):
        return from_mapping(cls, d, where or cls.__name__)


def to_dict(obj: Any) -> Any:
    """JSON-ready nested dicts/lists of a settings dataclass (field order kept)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace: the same settings always give the same bytes. A key added
    after its format version was released is left out while it holds its default, so a plan
    keeps the hash it had before the key existed."""
    data = to_dict(obj)
    if isinstance(data, dict):
        for key, default in ADDED_KEYS.get(type(obj).__name__, {}).items():
            if data.get(key) == default:
                del data[key]
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def settings_hash(obj: Any) -> str:
    """SHA-256 hex digest of ``canonical_json(obj)``: the one hash of a settings value."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parse_text(text: str, tp: Any, where: str) -> Any:
    """Parse a command-line value for a field of type ``tp``: scalars as written, tuples of
    scalars comma-separated (``1,1,1``), anything else (or anything) as JSON (``[[3,3,3],...]``)."""
    text = text.strip()
    if text[:1] in "[{":
        try:
            return _coerce(json.loads(text), tp, where)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: cannot parse {text!r} as JSON ({err})") from err
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if text.lower() in ("none", "null"):
            return None
        return _parse_text(text, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        scalar_args = [a for a in args if a is not Ellipsis]
        if all(a in (int, float, str, bool) for a in scalar_args):
            parts = [p.strip() for p in text.split(",") if p.strip()]
            item_tp = args[0] if args[-1] is Ellipsis else None
            items = [_parse_text(p, item_tp or args[min(i, len(args) - 1)], f"{where}[{i}]")
                     for i, p in enumerate(parts)]
            return _coerce(items, tp, where)
        raise ValueError(f"{where}: give this value as JSON, e.g. [[3,3,3],[3,3,3]]")
    try:
        if tp is bool:
            low = text.lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError(f"expected true/false, got {text!r}")
        if tp is int:
            return int(text)
        if tp is float:
            return _coerce(float(text), float, where)
        if tp is str:
            return text
    except ValueError as err:
        raise ValueError(f"{where}: cannot parse {text!r}: {err}") from err
    raise ValueError(f"{where}: give this value as JSON")
