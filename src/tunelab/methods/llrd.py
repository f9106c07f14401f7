"""Layer-wise learning-rate decay (Howard & Ruder, 2018, "ULMFiT", arXiv:1801.06146;
Clark et al., 2020, "ELECTRA", arXiv:2003.10555).

Every parameter trains, but lower layers move less: block i (1-based) gets
``lr * decay ** (L + 1 - i)``, the embeddings ``lr * decay ** (L + 1)``, the pooler and head
``lr``. The rate is stored per parameter group, so the warmup/decay schedule multiplies it.
Defaults lr 1e-4, decay 0.8 follow ELECTRA-base (a higher peak is safe because the lower
layers see much less of it).
"""

from dataclasses import dataclass
from typing import Annotated, ClassVar

from torch import nn

from tunelab.anatomy import anatomy
from tunelab.fields import Range
from tunelab.methods.base import Method, adamw_groups


@dataclass
class LLRD(Method):
    name = "llrd"
    description = "all parameters train; lr of layer i = lr * decay^(L+1-i), head at lr"
    trains_every_weight = True
    article = ("medium", "medium", "medium-size models")
    lr: ClassVar[float] = 1e-4
    space = {"decay": ("float", 0.6, 0.95)}
    decay: Annotated[float, Range(gt=0, le=1)] = 0.8
    """Multiplier per layer going down from the head (0 < decay <= 1)."""

    def prepare(self, model: nn.Module) -> nn.Module:
        anatomy(model).require_layers("llrd", "full, lora or bitfit", "decay")
        return model

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        a = anatomy(model)
        a.require_layers("llrd", "full, lora or bitfit", "decay")
        n = a.n_blocks
        by_depth: dict[int, list] = {}
        for name, p in model.named_parameters():
            by_depth.setdefault(a.depth(name), []).append((name, p))
        groups = []
        for d, named in sorted(by_depth.items()):
            layer_lr = lr * self.decay ** (n + 1 - d)
            groups += adamw_groups(named, layer_lr, weight_decay, depth=d)
        return groups
