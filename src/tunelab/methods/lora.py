"""LoRA: frozen weights plus trainable low-rank updates W + (alpha/r) B A (Hu et al., 2021,
"LoRA", arXiv:2106.09685), through peft.

Defaults r=8, alpha=16, dropout 0.1 on query/value are the article's. The LoRA paper used
4e-4 to 5e-4 for RoBERTa-base over many epochs; on a one-epoch budget that barely leaves the
majority class (measured here: MiniLM, 2,000 Rotten Tomatoes snippets, 5e-4 -> 57.8% test
accuracy; 4,000 snippets, 2e-3 -> 78.0%), so the default is 2e-3. The head trains fully.

Targets come from the model (tunelab.anatomy): peft's table for the architecture, else the
query and value projections found by name, else a fused qkv projection (GPT-2's ``c_attn``,
Phi-3's ``qkv_proj``), always confined to the transformer blocks so a head or pooler with
the same leaf name is never adapted.
"""

from dataclasses import dataclass
from typing import Annotated, ClassVar

from torch import nn

from tunelab.anatomy import anatomy
from tunelab.errors import ConfigError
from tunelab.fields import Positive, Range
from tunelab.methods.base import Method, peft_head, peft_task, stack_targets

DEFAULT_ROLES = [("q", "v"), ("qkv",), ("q", "k", "v", "attn_out")]
ALL_LINEAR = [("q", "k", "v", "qkv", "attn_out", "mlp_in", "mlp_out")]


@dataclass
class LoRA(Method):
    name = "lora"
    description = "low-rank adapters on attention projections (peft); head trains"
    saves_adapter = True
    efficient_default = True
    article = ("low", "high", "large models")
    lr: ClassVar[float] = 2e-3
    space = {
        "r": ("choice", [4, 8, 16, 32]),
        "alpha": ("choice", [8, 16, 32]),
        "dropout": ("float", 0.0, 0.2),
    }
    r: Annotated[int, Positive] = 8
    """Rank of the update matrices."""
    alpha: Annotated[int, Positive] = 16
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.1
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Module names to adapt; unset = query/value found in the model (peft's table first),
    [all-linear] = every linear layer of the transformer blocks."""

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TABLE

        a = anatomy(model)
        if not self.target_modules or self.target_modules == ["all-linear"]:
            roles = ALL_LINEAR if self.target_modules else DEFAULT_ROLES
            table = {} if self.target_modules else TABLE
            targets = a.pattern(stack_targets(a, table, roles, "lora"))
        else:
            targets = self.target_modules
            clash = [n for n, _ in model.named_modules() if a.is_head(n + ".") and
                     any(n == t or n.endswith("." + t) for t in targets)]  # fmt: skip
            if clash:
                raise ConfigError(
                    f"method.target_modules matches {clash[0]!r}, part of the task head, which "
                    f"trains in full; name modules inside the transformer blocks"
                )
        cfg = LoraConfig(
            task_type=peft_task(model),
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            bias="none",
            **peft_head(model, a),
        )
        return get_peft_model(model, cfg)
