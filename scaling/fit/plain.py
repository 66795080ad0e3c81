"""Plain JSON data -> the frozen dataclasses of fit results, every value checked against its annotation.

What `FitResult.read` and the report's reader of partial-prediction files use: a file that was cut short,
edited by hand or written by another version fails here with a `FitError` naming the key
(`fit.params[1].value: expected a number, got 'abc'`), never later while a figure is drawn.
Numbers stored as null (the writer turns NaN and infinities into null) come back as NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, TypeVar

from scaling.errors import FitError

T = TypeVar("T")


def from_plain(cls: type[T], data: Any, path: str) -> T:
    """An instance of the dataclass `cls` built from JSON data; `path` names the data in errors."""
    return _convert(cls, data, path)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _convert(option, value, path)
            except FitError:
                continue
        return _convert(options[-1], value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise FitError(f"{path}: expected a list, got {_kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise FitError(f"{path}: expected a list of {len(args)}, got {len(value)} items")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise FitError(f"{path}: expected an object, got {_kind(value)}")
        return {k: _convert(args[1], v, f"{path}.{k}") for k, v in value.items()} if args else dict(value)
    if tp is float:
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FitError(f"{path}: expected a number, got {_kind(value)}")
        return float(value)
    if tp in (int, bool, str):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            want = {int: "a whole number", bool: "true or false", str: "a string"}[tp]
            raise FitError(f"{path}: expected {want}, got {_kind(value)}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"{path}: no reader for the annotation {tp!r}")  # a programming error, not bad input


def _dataclass(cls: type, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise FitError(f"{path}: expected an object, got {_kind(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise FitError(f"{path}: unknown keys {unknown}; valid: {sorted(fields)}")
    hints, kwargs = _hints(cls), {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], f"{path}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise FitError(f"{path}: missing key {name!r}")
    return cls(**kwargs)
