"""YAML data -> typed dataclasses, each field carrying its help text and its range.

Config sections, strategy options and built-in suite options are plain dataclasses whose fields
come from ``field(default, help, **ranges)``. ``build`` converts plain YAML data into them and
checks every given value against its field's type and declared range, so a bound is written
once, on the field, and the check, its message and the generated docs (``docgen``) cannot
drift apart. A problem raises ``FieldError`` (the dotted field and what is expected); callers
turn it into a one-line ``ConfigError`` naming the file with ``FieldError.in_file``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from everlearn.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """What a field's value must satisfy beyond its type (``None`` always passes: a nullable
    field's null is checked by its type). ``gt``/``ge``/``lt``/``le``: bounds of a number;
    ``finite``: no inf or nan; ``min_len``: shortest string or list; ``unique``: a list without
    repeats; ``each``: the range of every item of a list."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    finite: bool = False
    min_len: int | None = None
    unique: bool = False
    each: Range | None = None

    def problem(self, value: Any, tp: Any) -> str | None:
        """What the value should have been (``expected ...``), or None when it is in range."""
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low_ok = ((self.gt is None or value > self.gt)
                      and (self.ge is None or value >= self.ge))
            high_ok = ((self.lt is None or value < self.lt)
                       and (self.le is None or value <= self.le))
            if not (low_ok and high_ok):
                return self.describe(tp)
            if self.finite and not math.isfinite(value):
                return "a finite number" + _or_null(tp)
        if isinstance(value, (str, list)):
            if self.min_len is not None and len(value) < self.min_len:
                return self.describe(tp)
            if self.unique and len(set(map(repr, value))) != len(value):
                return self.describe(tp)
            if self.each is not None and isinstance(value, list):
                item_tp = _item_type(tp)
                if any(self.each.problem(v, item_tp) for v in value):
                    return self.describe(tp)
        return None

    def describe(self, tp: Any) -> str:
        """The expected value in words: 'a positive number', 'an integer >= 1 or null'..."""
        return self._words(_plain(tp)) + _or_null(tp)

    def _words(self, tp: Any) -> str:
        noun = "integer" if tp is int else "number"
        low = ("<", self.gt) if self.gt is not None else ("<=", self.ge)
        high = ("<", self.lt) if self.lt is not None else ("<=", self.le)
        if low[1] is not None and high[1] is not None:
            return f"{low[1]} {low[0]} x {high[0]} {high[1]}"
        if self.gt == 0:
            return f"a positive {noun}"
        if low[1] is not None:
            return f"{type_name(tp)} {'>' if low[0] == '<' else '>='} {low[1]}"
        if high[1] is not None:
            return f"{type_name(tp)} {high[0]} {high[1]}"
        if get_origin(tp) is list:
            words = "a non-empty list" if self.min_len == 1 else "a list"
            if self.each is not None:
                words += " of " + self.each.item_words(_item_type(tp))
            return words + (" without repeats" if self.unique else "")
        if self.min_len == 1:
            return f"a non-empty {type_name(tp).removeprefix('a ')}"
        return type_name(tp)

    def item_words(self, tp: Any) -> str:
        """The range of a list's items, in the plural: 'non-empty strings'."""
        if tp is str and self.min_len == 1:
            return "non-empty strings"
        return self._words(tp)

    def __str__(self) -> str:
        """The range as docs/config.md shows it, e.g. '> 0, finite'."""
        parts = [f"{op} {v}" for op, v in ((">", self.gt), (">=", self.ge), ("<", self.lt),
                                           ("<=", self.le)) if v is not None]
        parts += ["finite"] if self.finite else []
        parts += ["not empty"] if self.min_len == 1 else (
            [f"at least {self.min_len} long"] if self.min_len is not None else [])
        parts += ["no repeats"] if self.unique else []
        parts += [f"each {self.each}"] if self.each is not None else []
        return ", ".join(parts)


def field(default: Any = dataclasses.MISSING, help: str = "", path: bool = False,
          **ranges: Any) -> Any:
    """A dataclass field with a help text and an optional range (the keywords of ``Range``;
    ``each`` as a mapping of them); mutable defaults go through ``default_factory``. ``path``:
    a file path, resolved against the config file's directory like the data paths."""
    if "each" in ranges:
        ranges["each"] = Range(**ranges["each"])
    metadata = {"help": help, "range": Range(**ranges)} if ranges else {"help": help}
    if path:
        metadata["path"] = True
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_fields(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) of the fields of ``cls.Options`` (a strategy's or a built-in
    suite's options), for `everlearn ls` and the docs."""
    out = []
    for f in dataclasses.fields(cls.Options):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((f.name, default, f.metadata.get("help", "")))
    return out


def field_range(f: dataclasses.Field) -> Range | None:
    """The range a field declares, or None."""
    return f.metadata.get("range")


class FieldError(Exception):
    """A value that does not fit its field; carries the dotted path of the field."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message

    def in_file(self, source: str) -> ConfigError:
        """The one-line user error: ``FILE: FIELD: expected ...``."""
        return ConfigError(f"{source}: {self.path}: {self.message}")


def type_name(tp: Any) -> str:
    """A type in the words an error message or the docs use: 'an integer', 'one of ...'."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {type_name(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _plain(tp: Any) -> Any:
    """``int | None`` -> ``int``: the type a range talks about."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _or_null(tp: Any) -> str:
    nullable = get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)
    return " or null" if nullable else ""


def _item_type(tp: Any) -> Any:
    plain = _plain(tp)
    return get_args(plain)[0] if get_origin(plain) is list else Any


def _convert_union(value: Any, tp: Any, path: str) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return convert(value, arg, path)
        except FieldError as exc:
            errors.append(exc)
    # Prefer the error from deepest inside a structure (most specific).
    deepest = max(errors, key=lambda e: len(e.path))
    if deepest.path != path:
        raise deepest
    raise FieldError(path, f"expected {type_name(tp)}, got {value!r}")


def _convert_scalar(value: Any, tp: Any, path: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise FieldError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            value = yaml11_float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise FieldError(path, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a bug in the dataclass


def convert(value: Any, tp: Any, path: str) -> Any:
    """Plain YAML data -> a value of type ``tp`` (dataclasses built with ``build``)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, path)
    if origin is Literal:
        if value not in get_args(tp):
            raise FieldError(path, f"expected {type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise FieldError(path, f"expected {type_name(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)
        return [convert(v, item_tp, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise FieldError(path, f"expected a mapping, got {value!r}")
        _, val_tp = get_args(tp)
        return {str(k): convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    return _convert_scalar(value, tp, path)


def yaml11_float(text: str) -> float | str:
    """Numbers like ``1e-3`` that YAML 1.1 leaves as strings; other text is returned as is."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def build(cls: type, value: Any, path: str = "") -> Any:
    """Plain data -> ``cls``: unknown keys refused, each value typed and range-checked
    (``cls.shorthand(value)``, when the class has one, first expands a YAML shorthand)."""
    if hasattr(cls, "shorthand"):
        value = cls.shorthand(value)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise FieldError(path, f"expected a mapping, got {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise FieldError(where, f"unknown field; expected one of {', '.join(sorted(fields))}")
    kwargs = {}
    for key, raw in value.items():
        sub = f"{path}.{key}" if path else key
        kwargs[key] = convert(raw, hints[key], sub)
        rng = field_range(fields[key])
        problem = rng.problem(kwargs[key], hints[key]) if rng is not None else None
        if problem:
            raise FieldError(sub, f"expected {problem}, got {kwargs[key]!r}")
    return cls(**kwargs)
