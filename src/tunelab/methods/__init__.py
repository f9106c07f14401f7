"""Fine-tuning methods: one small module each, listed in one literal dict.

Adding a method = one module, one line here, one example config, one test-matrix entry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tunelab.errors import ConfigError
from tunelab.fields import apply_fields
from tunelab.methods.adalora import AdaLoRA
from tunelab.methods.base import Method
from tunelab.methods.bitfit import BitFit
from tunelab.methods.freeze import Freeze
from tunelab.methods.full import Full
from tunelab.methods.ia3 import IA3
from tunelab.methods.llrd import LLRD
from tunelab.methods.lntuning import LNTuning
from tunelab.methods.loha import LoHa
from tunelab.methods.lokr import LoKr
from tunelab.methods.lora import LoRA
from tunelab.methods.oft import OFT
from tunelab.methods.prefix import Prefix
from tunelab.methods.prompt import Prompt
from tunelab.methods.vera import VeRA

DEFAULT = "full"  # the method of a config that names none

METHODS: dict[str, type[Method]] = {
    "full": Full,
    "llrd": LLRD,
    "freeze": Freeze,
    "bitfit": BitFit,
    "lora": LoRA,
    "prompt": Prompt,
    "prefix": Prefix,
    "ia3": IA3,
    "adalora": AdaLoRA,
    "vera": VeRA,
    "loha": LoHa,
    "lokr": LoKr,
    "oft": OFT,
    "lntuning": LNTuning,
}


def build_method(spec: dict[str, Any]) -> Method:
    """Instantiate a method from ``{"name": ..., knob: value, ...}``; every knob is checked
    (name, type, choices, bounds) here, before any data or model is loaded."""
    spec = dict(spec)
    name = spec.pop("name", DEFAULT)
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    if "lr" in spec:  # one key sets the learning rate
        raise ConfigError(
            f"method.lr is not a knob: a run's learning rate is train.lr (unset: the method's "
            f"default, {METHODS[name].lr:g} for {name})"
        )
    method = METHODS[name]()
    try:
        apply_fields(method, "method.", spec)
    except ConfigError as e:
        raise ConfigError(f"{e} (method {name})") from None
    return method


def method_class(name: str) -> type[Method]:
    """The class of a method by name; a record of a method this tunelab does not know (a
    newer version's) gets the base class: no claims about it."""
    return METHODS.get(name, Method)


def knobs(method: Method) -> dict[str, Any]:
    """The method's knobs and their current values."""
    return {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}


def method_dict(method: Method) -> dict[str, Any]:
    """The method as a config names it: {name, knob: value, ...}."""
    return {"name": method.name, **knobs(method)}
