"""What the training loop asks of a task, and nothing more (the loop never asks which task):

- ``encode(split, tokenizer, max_length) -> Encoded``: tokenize a split once;
- ``collate(data, idx, pad_id) -> batch``: tensors of one batch;
- ``forward(model, batch) -> (mean loss, predictions)``: one pass, for training and evaluation;
- ``targets(batch) -> labels``: what the predictions are compared with;
- ``metrics(predictions, labels) -> dict``: quality of a split (``accuracy`` and the rest);
- ``baseline(train_labels, labels) -> dict``: the same metrics for a model that learned
  nothing (the floor a run must beat).

A new task (a causal-LM objective next to classification) is one module here and one entry in
``TASKS``; ``RunConfig.task`` picks it.
"""

from __future__ import annotations

from tunelab.config import RunConfig
from tunelab.errors import ConfigError
from tunelab.tasks.causal_lm import CausalLM
from tunelab.tasks.classification import Classification
from tunelab.tasks.instruction import Instruction

TASKS = {"classification": Classification, "causal-lm": CausalLM}


def build_task(cfg: RunConfig, label_names: list[str]):
    """The task of a run config, for a dataset with these labels."""
    if cfg.task == "causal-lm" and cfg.data.response_column:
        return Instruction(label_names)
    if cfg.task == "causal-lm":
        return CausalLM(label_names, cfg.data.template, cfg.data.label_words)
    return TASKS[cfg.task](label_names)


def check_task(cfg: RunConfig) -> None:
    """Refuse a task setting that cannot work, before anything is loaded."""
    if cfg.data.response_column and cfg.task != "causal-lm":
        raise ConfigError("data.response_column (instruction data) needs task=causal-lm")
    if cfg.task == "causal-lm" and not cfg.data.response_column:
        CausalLM(
            ["_"] * len(cfg.data.label_words or ["_"]), cfg.data.template, cfg.data.label_words
        )
