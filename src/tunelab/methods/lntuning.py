"""LayerNorm tuning: only the normalisation layers (gain and shift) of the transformer
blocks and the final norm train, with the task head (Zhao et al., 2024, "Tuning LayerNorm in
Attention: Towards Efficient Multi-Modal LLM Finetuning", arXiv:2312.11420), through peft's
LN tuning (a trained copy of each norm, saved as an adapter).

Norms are found by class (LayerNorm, RMSNorm and kin) inside the blocks found by
tunelab.anatomy plus the one right above the stack (a decoder's final norm); the embeddings'
norm stays frozen, as in peft's tables. Default lr 1e-3, BitFit's: the same kind of tiny
set of shift/scale parameters (tuned 1e-4..1e-2).
"""

import warnings
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from tunelab.anatomy import NotApplicable, anatomy, unwrap
from tunelab.methods.base import Method, peft_adapter


def norm_layers(model: nn.Module) -> list[str]:
    """Full names of the normalisation modules of the blocks and the final norm."""
    a, base = anatomy(model), unwrap(model)
    top = a.n_blocks + 1
    return [
        n
        for n, m in base.named_modules()
        if "norm" in type(m).__name__.lower()
        and any(True for _ in m.parameters(recurse=False))
        and not a.is_head(n + ".")
        and (a.index(n) is not None or (a.depth(n) == top and a.stack))
    ]


@dataclass
class LNTuning(Method):
    name = "lntuning"
    description = "only the LayerNorm / RMSNorm layers and the head train (peft)"
    saves_adapter = True
    lr: ClassVar[float] = 1e-3

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import LNTuningConfig

        targets = norm_layers(model)
        if not targets:
            raise NotApplicable(
                f"lntuning on {anatomy(model).model_type}: no normalisation layers with "
                f"weights in its transformer blocks; use bitfit or lora"
            )
        with warnings.catch_warnings():  # peft asks a norm for in/out features and warns
            warnings.filterwarnings("ignore", "Unsupported layer type")
            return peft_adapter(model, LNTuningConfig, target_modules=targets)
