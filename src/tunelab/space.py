"""Search spaces for `tunelab tune`: each method's own (declared by the method), the shared
knobs a user switches on, the user's changes (ranges, choices, fixed values) checked before
any trial runs, and the Optuna suggestions that sample them."""

from __future__ import annotations

import dataclasses
from typing import Any

from tunelab.config import TuneConfig, load_config
from tunelab.errors import ConfigError
from tunelab.methods import METHODS

SHARED = {  # shared knobs a user can switch on with tune.shared / --space
    "batch_size": ("choice", [16, 32, 64]),
    "epochs": ("choice", [1, 2, 3]),
    "warmup": ("float", 0.0, 0.2),
    "weight_decay": ("float", 0.0, 0.1),
}


def search_space(method: str, tc: TuneConfig) -> dict[str, tuple]:
    """Dotted config key -> domain for one method: its lr from default/10 to default*10, the
    knobs its module declares, the shared knobs switched on, then the user's changes."""
    cls = METHODS[method]
    lr = cls().lr
    space: dict[str, tuple] = {"train.lr": ("log", lr / 10, lr * 10)}
    space.update({f"method.{k}": v for k, v in cls.space.items()})
    for name in tc.shared:
        if name not in SHARED:
            raise ConfigError(
                f"tune.shared: unknown knob {name!r}; choose from {', '.join(SHARED)}"
            )
        space[f"train.{name}"] = SHARED[name]
    for key, value in (tc.space.get(method) or {}).items():
        dotted = _dotted(method, key)
        space[dotted] = _domain(f"tune.space.{method}.{key}", value, space.get(dotted))
        for probe in _probes(space[dotted]):  # each end of a range must be a valid value
            load_config(None, [f"method={method}", f"{dotted}={probe!r}"])  # checks the knob
    return space


def check_spaces(methods: list[str], tc: TuneConfig) -> dict[str, dict[str, tuple]]:
    """Every method's space, validated before anything is loaded."""
    unknown = set(tc.space) - set(METHODS)
    if unknown:
        raise ConfigError(
            f"tune.space: unknown method {sorted(unknown)[0]!r}; choose from {', '.join(METHODS)}"
        )
    return {m: search_space(m, tc) for m in methods}


def _dotted(method: str, key: str) -> str:
    knobs = {f.name for f in dataclasses.fields(METHODS[method])}
    if key in ("lr", "train.lr"):
        return "train.lr"
    if key in knobs or key.removeprefix("method.") in knobs:
        return f"method.{key.removeprefix('method.')}"
    if key.removeprefix("train.") in SHARED:
        return f"train.{key.removeprefix('train.')}"
    allowed = ", ".join(["lr", *sorted(knobs - {"lr"}), *SHARED])
    raise ConfigError(f"tune.space.{method}: unknown knob {key!r}; allowed: {allowed}")


def _domain(key: str, value: Any, current: tuple | None) -> tuple:
    """A user's [low, high] range, list of choices, or fixed value, checked."""
    if not isinstance(value, list):
        return ("fixed", _number(value))
    if not value:
        raise ConfigError(f"{key} is an empty list; give [low, high], choices, or one value")
    value = [_number(v) for v in value]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if len(value) != 2 or not numeric:
        return ("choice", list(value))
    low, high = value
    if low >= high:
        raise ConfigError(f"{key}: the range [{low}, {high}] is empty; low must be below high")
    kind = current[0] if current and current[0] in ("log", "float", "int") else "float"
    if kind == "int" and not all(isinstance(v, int) for v in value):
        kind = "float"
    if kind == "log" and low <= 0:
        raise ConfigError(f"{key}: a log-uniform range needs low > 0, got {low}")
    return (kind, low, high)


def _number(v: Any) -> Any:
    """'1e-4' is a string to YAML 1.1; a number here."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _probes(domain: tuple) -> list:
    if domain[0] == "fixed":
        return [domain[1]]
    return list(domain[1]) if domain[0] == "choice" else [domain[1], domain[2]]


def suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    """One point of the space, drawn by the trial's sampler (fixed knobs just set)."""
    params = {}
    for key, (kind, *args) in space.items():
        if kind == "fixed":
            params[key] = args[0]
        elif kind == "choice":
            params[key] = trial.suggest_categorical(key, args[0])
        elif kind == "int":
            params[key] = trial.suggest_int(key, args[0], args[1])
        else:
            params[key] = trial.suggest_float(key, args[0], args[1], log=kind == "log")
    return params
