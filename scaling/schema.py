"""Generic validation of YAML data into frozen dataclasses, with errors that name the key path.

Used by the sweep spec and the SLURM cluster profiles. Supported field types: bool, int, float, str,
Literal (closed choices), Optional, tuple[X, ...] (a single value stands for a list of one),
Mapping[str, X], nested dataclasses, and classes with a `from_yaml(value, path)` classmethod.
A field with `metadata={"yaml": False}` cannot be set from YAML.
"""

from __future__ import annotations

import collections.abc
import copyreg
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from scaling.errors import SpecError


def _mappingproxy(items: dict) -> types.MappingProxyType:
    return types.MappingProxyType(items)


# Specs hold read-only mappings, which plain pickle (multiprocessing, torch.distributed spawn) refuses;
# cloudpickle (submitit, Ray) handles them already. This makes every spec picklable everywhere.
copyreg.pickle(types.MappingProxyType, lambda m: (_mappingproxy, (dict(m),)))


MAX_INT = 2**53
"The largest integer a spec field takes (exact as a float)."


def describe(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def convert(tp: Any, value: Any, path: str) -> Any:
    """Convert a YAML value to the annotated type `tp`, or raise SpecError naming `path`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if isinstance(tp, type) and hasattr(tp, "from_yaml"):
        return tp.from_yaml(value, path)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        # a mapping is tried as the mapping type first, so that its error is the one reported
        mapping = (dict, collections.abc.Mapping)
        others.sort(key=lambda a: not (isinstance(value, dict) and typing.get_origin(a) in mapping))
        errors = []
        for a in others:
            try:
                return convert(a, value, path)
            except SpecError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise SpecError(f"expected one of {', '.join(map(str, args))}, got {describe(value)}", path)
        return value
    if origin in (tuple, list):
        item = args[0] if args else Any
        if value is None:
            value = []
        if not isinstance(value, list):
            value = [value]  # a single value stands for a list of one
        return tuple(convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, collections.abc.Mapping):
        item = args[1] if args else Any
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise SpecError(f"expected a mapping, got {describe(value)}", path)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SpecError(f"keys must be strings, got {k!r}", path)
            out[k] = convert(item, v, f"{path}.{k}")
        return types.MappingProxyType(out)
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"expected true or false, got {describe(value)}", path)
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"expected an integer, got {describe(value)}", path)
        if abs(value) > MAX_INT:  # sizes, steps and counts computed from it must stay exact as floats
            raise SpecError(f"{value:.3g} is too large (at most {MAX_INT:.3g})", path)
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise SpecError(f"expected a number, got {value!r}", path) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpecError(f"expected a finite number, got {describe(value)}", path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(f"expected a string, got {describe(value)}", path)
        return value
    raise TypeError(f"spec type {tp!r} at {path} is not supported")  # a bug in this module, not user input


def yaml_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a spec dataclass that a YAML file may set."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)]


def build(cls: type, value: Any, path: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        keys = ", ".join(f.name for f in yaml_fields(cls))
        raise SpecError(f"expected a mapping with keys {keys}; got {describe(value)}", path)
    fields = {f.name: f for f in yaml_fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, raw in value.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise SpecError(f"unknown key {key!r}; valid keys: {', '.join(fields)}", sub)
        kwargs[key] = convert(hints[key], raw, sub)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"missing required key {name!r}", f"{path}.{name}" if path else name)
    return cls(**kwargs)


def parse(cls: type, data: Any, source: str, check: Callable[[Any], None] | None = None) -> Any:
    """Build `cls` from `data`, run the cross-field `check`; a SpecError names `source` and the key path."""
    try:
        obj = build(cls, data, "")
        if check is not None:
            check(obj)
    except SpecError as e:
        raise SpecError(e.message, e.path, source) from None
    return obj
