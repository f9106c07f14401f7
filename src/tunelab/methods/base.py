"""What every method shares: finding layers, the head, and AdamW parameter groups."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

# Names of the per-layer block containers across architectures:
# BERT/RoBERTa/DeBERTa "encoder.layer.3.", DistilBERT "transformer.layer.3.",
# Llama/Mistral/Qwen "model.layers.3.", GPT-2 "transformer.h.3.", T5 "block.3.".
_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_HEAD_NAMES = ("classifier", "score", "pre_classifier")


def layer_index(name: str) -> int | None:
    """Index of the transformer block a parameter belongs to, or None."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks, read from the parameter names."""
    idx = [i for n, _ in model.named_parameters() if (i := layer_index(n)) is not None]
    return max(idx) + 1 if idx else 0


def depth(name: str, n_layers: int) -> int:
    """Depth used by layer-wise schemes: embeddings 0, block i -> i + 1, the rest (pooler,
    final norm, classification head) n_layers + 1."""
    i = layer_index(name)
    if i is not None:
        return i + 1
    if "embed" in name or "wte" in name or "wpe" in name:
        return 0
    return n_layers + 1


def is_head(name: str) -> bool:
    """True for parameters of the task head trained from scratch."""
    return any(part in _HEAD_NAMES for part in name.split("."))


def no_decay(name: str, p: nn.Parameter) -> bool:
    """Biases and norm weights (1-D tensors) get no weight decay: decaying them only pulls
    shift/scale parameters towards zero without regularising the function (cf. nanoGPT)."""
    return p.ndim < 2


def adamw_groups(
    named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float, **extra: Any
) -> list[dict]:
    """Split parameters into a decayed and an undecayed group at one learning rate."""
    decay = [p for n, p in named if p.requires_grad and not no_decay(n, p)]
    plain = [p for n, p in named if p.requires_grad and no_decay(n, p)]
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, **extra},
        {"params": plain, "lr": lr, "weight_decay": 0.0, **extra},
    ]
    return [g for g in groups if g["params"]]


def set_trainable(model: nn.Module, keep) -> None:
    """requires_grad = keep(name) for every parameter."""
    for n, p in model.named_parameters():
        p.requires_grad_(bool(keep(n)))


class Method:
    """Base of a fine-tuning method: two hooks, both with sensible defaults.

    Subclasses are dataclasses whose fields are the method's knobs; ``lr`` is the default
    learning rate for the method (used when ``train.lr`` is unset).
    """

    name = "method"
    description = ""
    uses_peft = False
    lr: float = 5e-5

    def prepare(self, model: nn.Module) -> nn.Module:
        """Freeze / inject / wrap the model; return the model to train."""
        return model

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """AdamW parameter groups of the trainable parameters."""
        return adamw_groups(list(model.named_parameters()), lr, weight_decay)
