"""LoHa: the weight update as the Hadamard product of two low-rank products,
(B1 A1) * (B2 A2), rank up to r^2 for 2r(m+n) parameters (Hyeon-Woo et al., 2022, "FedPara",
arXiv:2108.06098; as packaged by LyCORIS), through peft. The head trains in full.

Defaults: peft's (r=8, alpha=8), on query/value like LoRA; the learning rate LoRA's 2e-3
(LyCORIS' guidance is LoRA-like rates; tuned 2e-4..2e-2).
"""

from dataclasses import dataclass
from typing import Annotated, ClassVar

from torch import nn

from tunelab.fields import Positive, Range
from tunelab.methods.base import Method, adapter_targets, peft_adapter


@dataclass
class LoHa(Method):
    name = "loha"
    description = "low-rank Hadamard-product updates on attention projections (peft)"
    saves_adapter = True
    lr: ClassVar[float] = 2e-3
    space = {"r": ("choice", [4, 8, 16]), "alpha": ("choice", [4, 8, 16])}
    r: Annotated[int, Positive] = 8
    """Rank of each of the two factors."""
    alpha: Annotated[int, Positive] = 8
    """Scale numerator: the update is multiplied by alpha / r."""
    module_dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    """Probability of skipping an adapted layer's update in a training step."""
    target_modules: list[str] | None = None
    """Module names to adapt; unset = query/value found in the model (peft's table first),
    [all-linear] = every linear layer of the transformer blocks."""

    def tuner(self) -> tuple[type, dict]:
        """peft's config class and target table (LoKr, its sibling, overrides this only)."""
        from peft import LoHaConfig
        from peft.utils import TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING as TABLE

        return LoHaConfig, TABLE

    def prepare(self, model: nn.Module) -> nn.Module:
        config, table = self.tuner()
        return peft_adapter(
            model,
            config,
            r=self.r,
            alpha=self.alpha,
            module_dropout=self.module_dropout,
            target_modules=adapter_targets(model, table, self.target_modules, self.name),
        )
