"""LoKr: the weight update as a Kronecker product W1 (x) W2, the larger factor low-rank
(Yeh et al., 2023, "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to
Model Evaluation", arXiv:2309.14859), through peft. The head trains in full.

Defaults: peft's (r=8, alpha=8, the factor split chosen by peft), on query/value like LoRA;
the learning rate LoRA's 2e-3 (tuned 2e-4..2e-2).
"""

from dataclasses import dataclass
from typing import Annotated

from tunelab.fields import Positive
from tunelab.methods.loha import LoHa


@dataclass
class LoKr(LoHa):
    """LoHa's knobs and peft call; only the tuner and the factorisation differ."""

    name = "lokr"
    description = "low-rank Kronecker-product updates on attention projections (peft)"
    r: Annotated[int, Positive] = 8
    """Rank of the larger Kronecker factor (kept whole when it is smaller than 2r)."""

    def tuner(self) -> tuple[type, dict]:
        from peft import LoKrConfig
        from peft.utils import TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING as TABLE

        return LoKrConfig, TABLE
