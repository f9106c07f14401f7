"""OFT: every adapted weight multiplied by a trained block-diagonal orthogonal matrix (a
Cayley transform of a skew-symmetric one), which keeps the angles between neurons
(Qiu et al., 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning",
arXiv:2306.07280), through peft (whose implementation stores each block's skew-symmetric
upper triangle). The head trains in full.

Defaults: peft's block size 32 on query/value; a layer whose input width is not a multiple
of the block size is refused by peft (then set ``block_size`` to a divisor). lr 2e-3, as
LoRA (the orthogonal factor starts at the identity, like LoRA's B = 0; tuned 2e-4..2e-2).
"""

from dataclasses import dataclass
from typing import Annotated, ClassVar

from torch import nn

from tunelab.fields import Positive, Range
from tunelab.methods.base import Method, adapter_targets, peft_adapter


@dataclass
class OFT(Method):
    name = "oft"
    description = "block-diagonal orthogonal rotations of attention projections (peft)"
    saves_adapter = True
    lr: ClassVar[float] = 2e-3
    space = {"block_size": ("choice", [8, 16, 32])}
    block_size: Annotated[int, Positive] = 32
    """Size of each orthogonal block (it must divide the adapted layers' input width)."""
    module_dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    """Probability of replacing a block by the identity in a training step."""
    target_modules: list[str] | None = None
    """Module names to adapt; unset = query/value found in the model (peft's table first),
    [all-linear] = every linear layer of the transformer blocks."""

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import OFTConfig
        from peft.utils import TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING as TABLE

        return peft_adapter(
            model,
            OFTConfig,
            r=0,
            oft_block_size=self.block_size,
            module_dropout=self.module_dropout,
            target_modules=adapter_targets(model, TABLE, self.target_modules, self.name),
        )
