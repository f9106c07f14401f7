"""VeRA: one pair of frozen random low-rank matrices shared by every adapted layer, and per
layer only two trained scaling vectors (Kopiczko et al., 2024, "VeRA: Vector-based Random
Matrix Adaptation", arXiv:2310.11454), through peft. The head trains in full.

Defaults are the paper's for RoBERTa-base on GLUE: r=256 (the rank is nearly free: only the
vectors train), d initialised to 0.1, query/value targets; its learning rates for the
adapters were 4e-3 to 1e-2, so the default is 4e-3 (tuned: 4e-4..4e-2). The random matrices
are saved with the adapter (``save_projection``), so it reloads exactly anywhere.
"""

from dataclasses import dataclass
from typing import Annotated, ClassVar

from torch import nn

from tunelab.fields import Positive, Range
from tunelab.methods.base import Method, adapter_targets, peft_adapter


@dataclass
class VeRA(Method):
    name = "vera"
    description = "shared frozen random low-rank matrices, trained scaling vectors (peft)"
    saves_adapter = True
    lr: ClassVar[float] = 4e-3
    space = {"r": ("choice", [64, 256, 1024]), "d_initial": ("log", 0.01, 1.0)}
    r: Annotated[int, Positive] = 256
    """Rank of the shared random matrices."""
    d_initial: Annotated[float, Range(gt=0)] = 0.1
    """Initial value of the trained vector d (the paper's 0.1)."""
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Module names to adapt; unset = query/value found in the model (peft's table first),
    [all-linear] = every linear layer of the transformer blocks."""

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import VeraConfig
        from peft.utils import TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING as TABLE

        return peft_adapter(
            model,
            VeraConfig,
            r=self.r,
            d_initial=self.d_initial,
            vera_dropout=self.dropout,
            target_modules=adapter_targets(model, TABLE, self.target_modules, self.name),
            save_projection=True,
        )
