"""LoKr: the weight update as a Kronecker product W1 (x) W2, the larger factor low-rank
(Yeh et al., 2023, "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to
Model Evaluation", arXiv:2309.14859), through peft. The head trains in full.

Defaults: peft's (r=8, alpha=8, the factor split chosen by peft), on query/value like LoRA;
the learning rate LoRA's 2e-3 (tuned 2e-4..2e-2).
"""

from dataclasses import dataclass
from typing import Annotated, ClassVar

from torch import nn

from tunelab.fields import Positive, Range
from tunelab.methods.base import Method, adapter_targets, peft_adapter


@dataclass
class LoKr(Method):
    name = "lokr"
    description = "low-rank Kronecker-product updates on attention projections (peft)"
    saves_adapter = True
    lr: ClassVar[float] = 2e-3
    space = {"r": ("choice", [4, 8, 16]), "alpha": ("choice", [4, 8, 16])}
    r: Annotated[int, Positive] = 8
    """Rank of the larger Kronecker factor (kept whole when it is smaller than 2r)."""
    alpha: Annotated[int, Positive] = 8
    """Scale numerator: the update is multiplied by alpha / r."""
    module_dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    """Probability of skipping an adapted layer's update in a training step."""
    target_modules: list[str] | None = None
    """Module names to adapt; unset = query/value found in the model (peft's table first),
    [all-linear] = every linear layer of the transformer blocks."""

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import LoKrConfig
        from peft.utils import TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING as TABLE

        return peft_adapter(
            model,
            LoKrConfig,
            r=self.r,
            alpha=self.alpha,
            module_dropout=self.module_dropout,
            target_modules=adapter_targets(model, TABLE, self.target_modules, self.name),
        )
