"""What the training loop asks of a task, and nothing more (the loop never asks which task):

- ``encode(split, tokenizer, max_length) -> Encoded``: tokenize a split once;
- ``collate(data, idx, pad_id) -> batch``: tensors of one batch;
- ``forward(model, batch) -> (mean loss, predictions)``: one pass, for training and evaluation;
- ``metrics(predictions, labels) -> dict``: quality of a split (``accuracy`` and the rest);
- ``baseline(train_labels, labels) -> dict``: the same metrics for a model that learned
  nothing (the floor a run must beat).

A new task (a causal-LM objective next to classification) is one module here and one entry in
``TASKS``; ``RunConfig.task`` picks it.
"""

from __future__ import annotations

from tunelab.tasks.classification import Classification

TASKS = {"classification": Classification}


def build_task(name: str, label_names: list[str]):
    return TASKS[name](label_names)
