"""Full fine-tuning: every parameter trains (Devlin et al., 2019, "BERT", arXiv:1810.04805).

Default lr 5e-5: the top of BERT's recommended {2e-5, 3e-5, 5e-5} range, because the small
MiniLM backbone and the one-epoch budget favour the larger step.
"""

from dataclasses import dataclass
from typing import ClassVar

from tunelab.methods.base import Method


@dataclass
class Full(Method):
    name = "full"
    description = "every parameter trains (the article's baseline)"
    title = "full fine-tuning"
    trains_every_weight = reference = True
    article = ("high", "high", "large datasets")
    lr: ClassVar[float] = 5e-5
