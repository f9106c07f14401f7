"""Typed fields checked once: a dataclass field's type (``Literal`` for a choice,
``Annotated[..., Range]`` for a bounded number) and the docstring written under it are its
rules and its documentation. The same checker serves config sections and method knobs, with
messages that name the key and what is allowed."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from tunelab.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Bounds of a number field: ``Annotated[int, Range(gt=0)]``."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def text(self) -> str:
        """'> 0', '>= 0', 'in [0, 1)' ..."""
        low = f"({self.gt:g}" if self.gt is not None else None
        low = f"[{self.ge:g}" if self.ge is not None else low
        high = f"{self.lt:g})" if self.lt is not None else None
        high = f"{self.le:g}]" if self.le is not None else high
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>' if low[0] == '(' else '>='} {low[1:]}"
        return f"{'<' if high and high[-1] == ')' else '<='} {(high or '')[:-1]}"

    def holds(self, v: float) -> bool:
        return not (
            (self.gt is not None and v <= self.gt)
            or (self.ge is not None and v < self.ge)
            or (self.lt is not None and v >= self.lt)
            or (self.le is not None and v > self.le)
        )


Positive = Range(gt=0)
NonNegative = Range(ge=0)


def _unwrap(tp: Any) -> tuple[Any, Range | None, bool]:
    """(base type, its Range or None, whether None is allowed) of a field annotation."""
    bounds = None
    if typing.get_origin(tp) is Annotated:
        bounds = next((m for m in tp.__metadata__ if isinstance(m, Range)), None)
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], bounds, len(args) < len(typing.get_args(tp))
    return tp, bounds, False


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (from YAML or the command line) to the field's type, check its
    choices and bounds, or raise ConfigError naming ``key``."""
    tp, bounds, optional = _unwrap(annotation)
    if optional and (
        value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
    ):
        return None
    if typing.get_origin(tp) is Literal:
        allowed = typing.get_args(tp)
        if str(value) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        return str(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp in (int, float):
        num = _number(key, value, tp)
        if bounds and not bounds.holds(num):
            raise ConfigError(f"{key} must be {bounds.text()}, got {value!r}")
        return num
    if tp is str and isinstance(value, (dict, list)):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if tp is str:
        return str(value)
    if typing.get_origin(tp) is list:
        items = value if isinstance(value, list) else str(value).split(",")
        return [str(v).strip() for v in items]
    return value


def _number(key: str, value: Any, tp: type) -> int | float:
    what = "an integer" if tp is int else "a number"
    try:
        if isinstance(value, bool):
            raise ValueError
        num = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {what}, got {value!r}") from None
    if not math.isfinite(num):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if tp is int:
        if num != int(num):
            raise ConfigError(f"{key} must be {what}, got {value!r}")
        return int(num)
    return num


def apply_fields(obj: Any, prefix: str, values: dict[str, Any], special: dict | None = None):
    """Set fields of dataclass ``obj`` from a nested dict, validating names, types, choices and
    bounds. Used for config sections and for method knobs alike; ``special`` maps a field
    name to ``merge(current, value) -> new value`` for a field with rules of its own."""
    special = special or {}
    hints = typing.get_type_hints(type(obj), include_extras=True)
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"unknown config key {full!r}; allowed under "
                f"{prefix.rstrip('.') or 'the top level'}: {', '.join(names)}"
            )
        current = getattr(obj, key)
        if key in special:
            setattr(obj, key, special[key](current, value))
        elif dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} must be a mapping of its fields, got {value!r}")
            apply_fields(current, f"{full}.", value)
        elif isinstance(current, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} must be a mapping, got {value!r}")
            setattr(obj, key, _deep_merge(current, value))
        else:
            setattr(obj, key, coerce(full, value, hints[key]))


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        both = isinstance(out.get(k), dict) and isinstance(v, dict)
        out[k] = _deep_merge(out[k], v) if both else v
    return out


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in its class (one source for the CLI
    help, `tunelab config` and `tunelab methods`)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(inspect.cleandoc("\n" + inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
            ):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def choices_text(cls: type, name: str) -> str:
    """'one of a, b' or 'in (0, 1)' for a field with choices or bounds, else ''."""
    tp, bounds, _ = _unwrap(typing.get_type_hints(cls, include_extras=True)[name])
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(typing.get_args(tp))
    return bounds.text() if bounds else ""
