"""BitFit: only the bias terms and the task head train (Ben Zaken et al., 2022, "BitFit",
arXiv:2106.10199).

Default lr 1e-3: the paper searched {1e-4, 4e-4, 7e-4, 1e-3} and found the larger rates best
for the small bias-only parameter set.
"""

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from tunelab.anatomy import NotApplicable, anatomy
from tunelab.methods.base import Method, set_trainable


@dataclass
class BitFit(Method):
    name = "bitfit"
    description = "only bias terms and the classification head train"
    lr: ClassVar[float] = 1e-3

    def prepare(self, model: nn.Module) -> nn.Module:
        if not any(n.endswith(".bias") for n, _ in model.named_parameters()):
            raise NotApplicable(
                f"bitfit on {model.config.model_type}: it trains only bias terms and "
                f"{type(model).__name__} has none (Llama-style models drop them); use lora, ia3 "
                f"or prompt instead"
            )
        a = anatomy(model)
        set_trainable(model, lambda name: name.endswith(".bias") or a.is_head(name))
        return model
