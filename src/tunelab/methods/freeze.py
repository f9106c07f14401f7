"""Partial fine-tuning: only the top k blocks, the pooler and the head train (what the
article's "layer-wise" snippet actually does; cf. Lee et al., 2019, "What would Elsa do?
Freezing layers during transformer fine-tuning", arXiv:1911.03090).

Default k=2 and lr 1e-4: Lee et al. recover most of full fine-tuning's quality with a
quarter of the layers; fewer trainable layers tolerate a larger step.
"""

from dataclasses import dataclass
from typing import Annotated, ClassVar

from torch import nn

from tunelab.anatomy import anatomy
from tunelab.errors import ConfigError
from tunelab.fields import NonNegative
from tunelab.methods.base import Method, set_trainable


@dataclass
class Freeze(Method):
    name = "freeze"
    description = "bottom layers frozen; the top k blocks, pooler and head train"
    lr: ClassVar[float] = 1e-4
    space = {"k": ("choice", [1, 2, 3, 4])}
    k: Annotated[int, NonNegative] = 2
    """Number of top transformer blocks that train."""

    def prepare(self, model: nn.Module) -> nn.Module:
        a = anatomy(model)
        a.require_layers("freeze", "full, lora or bitfit", "freeze")
        n = a.n_blocks
        if not 0 <= self.k <= n:
            raise ConfigError(
                f"method.k must be between 0 and the model's {n} layers, got {self.k}"
            )
        set_trainable(model, lambda name: a.depth(name) > n - self.k)
        return model
