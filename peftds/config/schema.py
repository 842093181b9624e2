"""Typed config sections: each field's type, range and one-line help, checked when a config is read.

A section is a frozen dataclass whose fields are declared with :func:`setting`. :func:`convert` turns a
plain mapping (a composed config section) into the dataclass, rejecting unknown keys, wrong types and
out-of-range values with one :class:`PeftdsError` line that names ``<section>.<key>``. Sections offer
read access like a mapping (``section.get("lr")``, ``section["lr"]``) so that code written against
plain dicts takes them unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from peftds.errors import PeftdsError

_MISSING = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    help: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
) -> Any:
    """A dataclass field with its help line and its checks (bounds, allowed values)."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": tuple(choices) if choices else None}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Section:
    """Base of every typed config section."""

    section: ClassVar[str] = ""  # the config key it is read from, e.g. "train"

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _container(raw: Any) -> dict[str, Any]:
    """A composed (OmegaConf) or plain mapping as a plain dict, interpolations resolved."""
    if raw is None:
        return {}
    if hasattr(raw, "_metadata"):  # an OmegaConf container, without importing omegaconf here
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(raw, resolve=True)
    if not isinstance(raw, Mapping):
        raise PeftdsError(f"expected a mapping of settings, got {raw!r}")
    return dict(raw)


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    if tp is float:
        return "number"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """`value` as type `tp`, or raise naming `where`; no silent conversion from strings."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except PeftdsError as e:
                errors.append(e)
        raise PeftdsError(f"{where} must be {_type_name(tp)}, got {value!r}")
    if typing.get_origin(tp) is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise PeftdsError(f"{where} must be one of {', '.join(map(repr, typing.get_args(tp)))}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise PeftdsError(f"{where} must be a list of {_type_name(item)}, got {value!r}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise PeftdsError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, Section):
        if not isinstance(value, Mapping):
            raise PeftdsError(f"{where} must be a mapping, got {value!r}")
        return convert(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise PeftdsError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise PeftdsError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PeftdsError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise PeftdsError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise PeftdsError(f"{where} must be a string, got {value!r}")
    raise TypeError(f"unsupported schema type {tp!r} at {where}")


def _check_range(meta: Mapping[str, Any], value: Any, where: str) -> None:
    if value is None or isinstance(value, bool):
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise PeftdsError(f"{where} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if not isinstance(value, (int, float)):
        return
    for key, ok, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise PeftdsError(f"{where} must be {word} {bound}, got {value!r}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def convert(cls: type[Section], raw: Mapping[str, Any] | None, where: str | None = None) -> Any:
    """`raw` checked and converted to the section `cls`; missing keys take their defaults."""
    where = where or cls.section
    if isinstance(raw, cls):
        return raw
    raw = _container(raw)
    names = cls.keys()
    unknown = sorted(set(raw) - set(names))
    if unknown:
        named = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise PeftdsError(f"unknown key(s) {named} (known: {', '.join(names)})")
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name in raw:
            value = _coerce(hints[f.name], raw[f.name], key)
        elif f.default is not _MISSING:
            value = f.default
        elif f.default_factory is not _MISSING:
            value = f.default_factory()
        else:
            raise PeftdsError(f"{key} is required")
        _check_range(f.metadata, value, key)
        values[f.name] = value
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        check(where)
    return obj


def describe(cls: type[Section], prefix: str | None = None) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) of every field, nested sections flattened: what `--help` prints."""
    prefix = cls.section if prefix is None else prefix
    hints = _hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if isinstance(tp, type) and issubclass(tp, Section):
            rows += describe(tp, key)
            continue
        default = f.default if f.default is not _MISSING else None
        if f.default_factory is not _MISSING:
            default = f.default_factory()
        rows.append((key, _type_name(tp), default, f.metadata.get("help", "")))
    return rows
