"""Configs from JSON/TOML, checked against their dataclass: one schema per config, its type hints.

Every config pixcade reads (training config, cascade.json stages, U-Net configs) is a
dataclass; `from_json` builds one from parsed JSON, checking every value against the
field's annotation before the dataclass (and so any model) sees it, so a wrong type is a
one-line `PixcadeError` naming the field ("train.lr must be a finite number, got
'fast'"), never a TypeError deep inside training. The dataclass's ``__post_init__`` then
checks ranges and relations between fields, on values of the right types.

Supported annotations: ``bool``, ``int``, ``float`` (finite; an int is accepted), ``str``,
``X | None``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[str, X]``, ``Any``,
unions of those, and nested dataclasses (built the same way).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, TypeVar

from pixcade.errors import PixcadeError

T = TypeVar("T")


class _Mismatch(Exception):
    """A value does not fit an annotation (turned into a PixcadeError naming the field)."""


def from_json(cls: type[T], data: Any, what: str) -> T:
    """A ``cls`` built from the JSON object ``data``; ``what`` names it in errors ("train")."""
    if not isinstance(data, dict):
        raise PixcadeError(f"{what} must be an object ({{...}}), got {_show(data)}")
    check_known_keys(cls, data, what)
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise PixcadeError(f"{what} lacks the required field {f.name!r}")
            continue
        kwargs[f.name] = convert(hints[f.name], data[f.name], f"{what}.{f.name}")
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_known_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """Refuse keys of ``d`` that are no field of the dataclass ``cls`` (a misspelt config
    option must not be silently ignored): "<what> has unknown keys: [...]"."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise PixcadeError(f"{what} has unknown keys: {sorted(unknown)}")


def convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (lists become tuples where ``tp`` says)."""
    try:
        return _convert(tp, value, where)
    except _Mismatch:
        raise PixcadeError(f"{where} must be {describe(tp)}, got {_show(value)}") from None


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except _Mismatch:
                pass
        raise _Mismatch
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # built already (e.g. a U-Net preset)
            return value
        if not isinstance(value, dict):
            raise _Mismatch
        return from_json(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # an int beyond float's range
                raise _Mismatch from None
            if math.isfinite(value):
                return value
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_convert(a, v, where) for a, v in zip(args, value))
        items = [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _Mismatch
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"pixcade.schema: unsupported annotation {tp!r} at {where}")  # a pixcade bug


def describe(tp: Any) -> str:
    """The annotation in words, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        words = [describe(a) for a in args if a is not type(None)]
        if type(None) in args:
            words.append("null")
        return " or ".join(words)
    if dataclasses.is_dataclass(tp) or origin is dict:
        return "an object ({...})"
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {len(args)}: " + ", ".join(describe(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_plural(args[0])}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(tp, str(tp))


def _plural(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "objects ({...})"
    return {bool: "booleans", int: "integers", float: "finite numbers", str: "strings"}.get(tp, describe(tp))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
