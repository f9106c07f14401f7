"""(IA)^3: learned vectors that rescale keys, values and feed-forward activations (Liu et al.,
2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", arXiv:2205.05638), through peft. The classification head trains too.

Default lr 3e-3: the paper's setting for (IA)^3 with Adafactor/AdamW. Targets: peft's tables
for the architecture, else the key and value projections found in the model (a fused qkv
projection where there is one: then the queries are rescaled too) and the feed-forward
output projection (tunelab.anatomy).
"""

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from tunelab.anatomy import NotApplicable, anatomy, experts
from tunelab.methods.base import Method, peft_head, peft_task, stack_targets


@dataclass
class IA3(Method):
    name = "ia3"
    description = "learned rescaling vectors on keys, values and FFN (peft); head trains"
    saves_adapter = True
    lr: ClassVar[float] = 3e-3

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import IA3Config, get_peft_model
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF_TABLE
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TABLE

        a = anatomy(model)
        if experts(model):
            raise NotApplicable(
                f"ia3 on {a.model_type}: its feed-forward layers are routed experts (fused "
                f"3-D weights), which peft's IA3 cannot rescale; use lora "
                f"(method.target_parameters=[experts] adapts them) or full"
            )
        ff = stack_targets(a, FF_TABLE, [("mlp_out",)], "ia3")
        kv = stack_targets(a, TABLE, [("k", "v"), ("qkv",)], "ia3")
        cfg = IA3Config(
            task_type=peft_task(model),
            target_modules=a.pattern(kv + ff),
            feedforward_modules=a.pattern(ff),
            **peft_head(model, a),
        )
        return get_peft_model(model, cfg)
