"""LoRA: frozen weights plus trainable low-rank updates W + (alpha/r) B A (Hu et al., 2021,
"LoRA", arXiv:2106.09685), through peft, and the variants practitioners choose between, each
a knob (all off by default: plain LoRA):

- ``dora``: weight-decomposed LoRA, a trained magnitude per output and LoRA on the direction
  (Liu et al., 2024, "DoRA", arXiv:2402.09353); peft's ``use_dora``. Slower per step.
- ``rslora``: rank-stabilised scaling alpha/sqrt(r) instead of alpha/r, so larger ranks keep
  learning (Kalajdzievski, 2023, arXiv:2312.03732); peft's ``use_rslora``.
- ``init``: ``pissa`` starts A, B from the principal singular vectors of W and trains them,
  the residual frozen (Meng et al., 2024, "PiSSA", arXiv:2404.02948); ``olora`` from a QR
  decomposition of W (Büyükakyüz, 2024, "OLoRA", arXiv:2406.01775); ``gaussian`` A
  Gaussian instead of Kaiming-uniform. Both SVD/QR inits are deterministic, so the saved
  adapter reloads exactly: loading it runs the same decomposition of the same base.
- ``loraplus_ratio``: B learns ``ratio`` x the learning rate of A (Hayou et al., 2024,
  "LoRA+", arXiv:2402.12354; the paper recommends about 16); 1 = plain LoRA.

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
from typing import Annotated, ClassVar, Literal

from torch import nn

from tunelab.fields import Positive, Range
from tunelab.methods.base import (
    Method,
    adamw_groups,
    adapter_targets,
    expert_targets,
    peft_adapter,
)

INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


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
    plan_knobs = {"init": "default"}  # same shapes and cost; an SVD needs real weights
    r: Annotated[int, Positive] = 8
    """Rank of the update matrices."""
    alpha: Annotated[int, Positive] = 16
    """Scale numerator: the update is multiplied by alpha / r (alpha / sqrt(r) with rslora)."""
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.1
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Module names to adapt; unset = query/value found in the model (peft's table first),
    [all-linear] = every linear layer of the transformer blocks."""
    target_parameters: list[str] | None = None
    """A mixture of experts' fused expert weights to adapt as well (peft's
    ``target_parameters``: each expert gets its own low-rank update): [experts] = every routed
    expert weight; unset = none (the experts stay frozen). Needs dropout=0. The routers are
    never adapted unless named here."""
    dora: bool = False
    """DoRA: a trained magnitude per output, LoRA on the direction (arXiv:2402.09353)."""
    rslora: bool = False
    """rsLoRA: scale alpha / sqrt(r) (arXiv:2312.03732)."""
    init: Literal["default", "gaussian", "pissa", "olora"] = "default"
    """Initialisation of A and B: peft's default (B = 0), gaussian A, PiSSA (principal
    singular vectors of W, arXiv:2404.02948) or OLoRA (QR of W, arXiv:2406.01775)."""
    loraplus_ratio: Annotated[float, Range(ge=1)] = 1.0
    """LoRA+: B's learning rate over A's (arXiv:2402.12354 suggests 16); 1 = plain LoRA."""

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TABLE

        return peft_adapter(
            model,
            LoraConfig,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=adapter_targets(model, TABLE, self.target_modules, self.name),
            bias="none",
            use_dora=self.dora,
            use_rslora=self.rslora,
            init_lora_weights=INITS[self.init],
            **expert_targets(model, self.target_parameters, self.name, self.dropout),
        )

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """LoRA+ puts the B matrices in groups of their own at ratio x lr."""
        named = list(model.named_parameters())
        if self.loraplus_ratio == 1:
            return adamw_groups(named, lr, weight_decay)
        is_b = {n: "lora_B" in n or "lora_embedding_B" in n for n, _ in named}
        rest = [(n, p) for n, p in named if not is_b[n]]
        b = [(n, p) for n, p in named if is_b[n]]
        ratio = self.loraplus_ratio
        return adamw_groups(rest, lr, weight_decay) + adamw_groups(b, lr * ratio, weight_decay)
