"""The Task seam: everything the training loop, ``measure`` and ``plan`` ask of a task, and
nothing more (they never ask which task it is, nor read the config to find out).

A new task is one module in this package that satisfies ``Task``, one line in ``TASKS``
(tasks/__init__.py) and one row in the tests.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from tunelab.batches import Encoded

Batch = dict[str, torch.Tensor]


class Task(Protocol):
    label_names: list[str]
    lm_head: bool
    """The model keeps its language-model head (a decoder); else a fresh classification head."""
    zero_shot: bool
    """The untrained model's scores are a baseline worth measuring (a decoder's)."""
    has_accuracy: bool
    """Predictions are compared with labels (accuracy, macro-F1); else only the loss and
    perplexity say how good the model is."""
    selection: str | None
    """The metric that picks the best validation (None: train.metric)."""
    template: str | None
    """The prompt each example fills (a decoder classifying as text; None: no prompt)."""

    @classmethod
    def from_config(cls, cfg: Any, label_names: list[str]) -> Task:
        """The task for a run config (its data section's settings) and these labels."""

    def encode(self, split: Any, tokenizer: Any, max_length: int) -> Encoded:
        """Tokenize a split once."""

    def collate(self, data: Encoded, idx: list[int], pad_id: int) -> Batch:
        """Tensors of one batch."""

    def forward(self, model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass, for training and evaluation: (mean loss, predictions)."""

    def targets(self, batch: Batch) -> torch.Tensor:
        """What the predictions are compared with."""

    def metrics(self, preds: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Quality of a split, named as ``results.Scores`` names it (accuracy, macro_f1)."""

    def baseline(self, train_labels: list[int], labels: list[int]) -> dict[str, float]:
        """The same metrics for a model that learned nothing (the floor a run must beat)."""

    def samples(self, model: Any, data: Encoded, tokenizer: Any) -> list[dict[str, str]]:
        """A few generations kept with each validation ([] for a task that has none)."""
