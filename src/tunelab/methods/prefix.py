"""Prefix tuning: trainable key/value prefixes in every attention layer (Li & Liang, 2021,
"Prefix-Tuning", arXiv:2101.00190), through peft. The classification head trains too.

Default lr 1e-2 and 20 virtual tokens follow P-tuning v2's classification settings. peft
passes the prefixes as ``past_key_values``; models whose forward no longer accepts them
(BERT and Llama in transformers 5.x renamed it ``cache``) are refused with a clear message.
"""

import inspect
from dataclasses import dataclass
from typing import Annotated, ClassVar

from torch import nn

from tunelab.errors import TunelabError
from tunelab.fields import Positive
from tunelab.methods.base import Method, peft_task


def accepts_past_key_values(model: nn.Module) -> bool:
    """Whether the model (or its backbone) takes ``past_key_values``, which peft needs."""
    modules = [model, getattr(model, model.base_model_prefix, None)]
    return any(
        m is not None and "past_key_values" in inspect.signature(m.forward).parameters
        for m in modules
    )


@dataclass
class Prefix(Method):
    name = "prefix"
    description = "trainable key/value prefixes in every attention layer (peft); head trains"
    saves_adapter = True
    note = (
        "no configs/prefix.yaml: peft injects prefixes through past_key_values, which the "
        "default MiniLM (BERT) and Llama models no longer accept under transformers 5; the run "
        "is refused with that reason. Use it on a model whose forward takes past_key_values."
    )
    lr: ClassVar[float] = 1e-2
    space = {"num_virtual_tokens": ("choice", [10, 20, 30])}
    num_virtual_tokens: Annotated[int, Positive] = 20
    """Number of prefix positions per layer."""

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import PrefixTuningConfig, get_peft_model

        if not accepts_past_key_values(model):
            import transformers

            raise TunelabError(
                f"prefix tuning needs a model whose forward accepts past_key_values; "
                f"{type(model).__name__} under transformers {transformers.__version__} does not "
                f"(peft cannot inject prefixes). Use method prompt or lora instead."
            )
        cfg = PrefixTuningConfig(
            task_type=peft_task(model), num_virtual_tokens=self.num_virtual_tokens
        )
        return get_peft_model(model, cfg)
