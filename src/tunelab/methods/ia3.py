"""(IA)^3: learned vectors that rescale keys, values and feed-forward activations (Liu et al.,
2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", arXiv:2205.05638), through peft. The classification head trains too.

Default lr 3e-3: the paper's setting for (IA)^3 with Adafactor/AdamW.
"""

from dataclasses import dataclass

from peft import IA3Config, get_peft_model
from torch import nn

from tunelab.methods.base import LR, Method, peft_task


@dataclass
class IA3(Method):
    name = "ia3"
    description = "learned rescaling vectors on keys, values and FFN (peft); head trains"
    lr: LR = 3e-3

    def prepare(self, model: nn.Module) -> nn.Module:
        return get_peft_model(model, IA3Config(task_type=peft_task(model)))
