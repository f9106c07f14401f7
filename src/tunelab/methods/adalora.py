"""AdaLoRA: LoRA in SVD form (P diag(E) Q) whose rank budget moves during training to the
layers whose singular values matter most, by a sensitivity score, from ``init_r`` per layer
down to an average of ``target_r`` (Zhang et al., 2023, "AdaLoRA: Adaptive Budget Allocation
for Parameter-Efficient Fine-Tuning", arXiv:2303.10512), through peft. The head trains in
full.

The budget needs a call after every optimizer step (``after_step``, the loop's one per-step
seam): the schedule is the paper's shape in fractions of the run's steps, warm-up at full
rank for the first ``tinit`` of them, the budget cut down cubically until the last ``tfinal``,
which train at the final ranks. Defaults: init_r 12 and target_r 8 (the paper's GLUE setting
with query/value targets, here like LoRA's), orthogonality regulariser 0.5 (the paper's 0.1
to 0.5; added to the training loss where peft computes it, i.e. when the model computes the
loss from labels, and never to a validation or test loss); lr LoRA's 2e-3. A resumed run
keeps the masks (they are weights) and restarts the sensitivity averages.
"""

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.fields import Positive, Range
from tunelab.methods.base import Method, adapter_targets, peft_adapter


@dataclass
class AdaLoRA(Method):
    name = "adalora"
    description = "LoRA whose rank budget moves to the layers that need it (peft)"
    saves_adapter = True
    lr: ClassVar[float] = 2e-3
    space = {"init_r": ("choice", [8, 12, 16]), "target_r": ("choice", [2, 4, 6])}
    init_r: Annotated[int, Positive] = 12
    """Rank each layer starts with."""
    target_r: Annotated[int, Positive] = 8
    """Average rank per layer once the budget is spent."""
    alpha: Annotated[int, Positive] = 16
    """Scale numerator of the update."""
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.1
    """Dropout on the adapter input."""
    tinit: Annotated[float, Range(ge=0, lt=1)] = 0.1
    """Fraction of the steps trained at full rank before the budget starts to fall."""
    tfinal: Annotated[float, Range(ge=0, lt=1)] = 0.2
    """Fraction of the steps trained at the final ranks at the end."""
    orth_reg: Annotated[float, Range(ge=0)] = 0.5
    """Weight of the orthogonality regulariser on P and Q."""
    target_modules: list[str] | None = None
    """Module names to adapt; unset = query/value found in the model (peft's table first),
    [all-linear] = every linear layer of the transformer blocks."""

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import AdaLoraConfig
        from peft.utils import TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING as TABLE

        if self.target_r >= self.init_r:  # equal: peft's budget step fails (nothing to mask)
            raise ConfigError(
                f"method.target_r ({self.target_r}) is not below method.init_r "
                f"({self.init_r}): AdaLoRA moves rank by taking it away; set target_r < init_r "
                f"(for fixed ranks use lora)"
            )
        if self.tinit + self.tfinal >= 1:
            raise ConfigError(
                f"method.tinit + method.tfinal = {self.tinit + self.tfinal:g} leaves no steps "
                f"to move the rank budget; keep their sum below 1"
            )
        model = peft_adapter(
            model,
            AdaLoraConfig,
            init_r=self.init_r,
            target_r=self.target_r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            orth_reg_weight=self.orth_reg,  # while training only (regularise_in_training)
            total_step=1_000_000,  # the real schedule is set at the first step (after_step)
            tinit=0,
            tfinal=0,
            target_modules=adapter_targets(model, TABLE, self.target_modules, self.name),
        )
        model.base_model.register_forward_pre_hook(regularise_in_training(self.orth_reg))
        return model

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        tuner = model.base_model
        config = tuner.peft_config[tuner.trainable_adapter_name]
        if config.total_step != total_steps:  # the run's budget, known once the loop runs
            config.total_step = total_steps
            config.tinit = int(self.tinit * total_steps)
            config.tfinal = int(self.tfinal * total_steps)
            if config.tinit >= total_steps - config.tfinal:  # too few steps to move anything
                config.tinit, config.tfinal = 0, 0
        if step > total_steps - config.tfinal and not config.rank_pattern:
            config.rank_pattern = kept_ranks(tuner.model)  # resumed in the final phase
        tuner.update_and_allocate(step)


def regularise_in_training(weight: float):
    """A forward pre-hook on peft's tuner: its orthogonality regulariser is added to the loss
    while training only, so validation and test losses are the task's, like every method's
    (peft adds it to any loss the model computes)."""

    def hook(tuner: nn.Module, args) -> None:
        config = tuner.peft_config[tuner.trainable_adapter_name]
        config.orth_reg_weight = weight if tuner.training else 0.0

    return hook


def kept_ranks(model: nn.Module) -> dict[str, list[bool]]:
    """The rank pattern peft keeps in memory, read back from the masked singular values
    (a pruned rank's E is exactly zero), keyed as peft keys it (E's name in the tuned model)."""
    with torch.no_grad():
        return {n: (p != 0).view(-1).tolist() for n, p in model.named_parameters() if "lora_E" in n}
