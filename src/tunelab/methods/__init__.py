"""Fine-tuning methods: one small module each, listed in one literal dict.

Adding a method = one module, one line here, one example config, one test-matrix entry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tunelab.config import apply_fields
from tunelab.errors import ConfigError
from tunelab.methods.base import Method
from tunelab.methods.bitfit import BitFit
from tunelab.methods.freeze import Freeze
from tunelab.methods.full import Full
from tunelab.methods.ia3 import IA3
from tunelab.methods.llrd import LLRD
from tunelab.methods.lora import LoRA
from tunelab.methods.prefix import Prefix
from tunelab.methods.prompt import Prompt

METHODS: dict[str, type[Method]] = {
    "full": Full,
    "llrd": LLRD,
    "freeze": Freeze,
    "bitfit": BitFit,
    "lora": LoRA,
    "prompt": Prompt,
    "prefix": Prefix,
    "ia3": IA3,
}


def build_method(spec: dict[str, Any]) -> Method:
    """Instantiate a method from ``{"name": ..., knob: value, ...}``; every knob is checked
    (name, type, choices, bounds) here, before any data or model is loaded."""
    spec = dict(spec)
    name = spec.pop("name", "full")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    method = METHODS[name]()
    try:
        apply_fields(method, "method.", spec)
    except ConfigError as e:
        raise ConfigError(f"{e} (method {name})") from None
    return method


def knobs(method: Method) -> dict[str, Any]:
    """The method's knobs and their current values."""
    return {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}
