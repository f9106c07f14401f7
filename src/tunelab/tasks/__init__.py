"""Tasks: what a run learns and how it is scored. ``base.Task`` declares everything the
training loop, ``measure`` and ``plan`` ask of one (they never ask which task it is);
``task_class`` picks the task of a config, ``prepare_data`` loads and encodes a run's data with
it once per process.

A new task is one module here, one entry in ``TASKS`` (a value of ``RunConfig.task``), a
config and a row in the tests.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass

from tunelab.batches import Encoded
from tunelab.config import RunConfig
from tunelab.data import Splits, load_splits
from tunelab.errors import ConfigError
from tunelab.files import is_main
from tunelab.models import load_tokenizer
from tunelab.results import DataInfo, Scores
from tunelab.tasks.base import Task
from tunelab.tasks.causal_lm import CausalLM
from tunelab.tasks.classification import Classification
from tunelab.tasks.instruction import Instruction

TASKS = {"classification": Classification, "causal-lm": CausalLM}


def task_class(cfg: RunConfig) -> type[Task]:
    """Which task a config trains (what tune, predict and the loop ask, never the config):
    ``cfg.task``, where causal-lm on instruction data (a response column) is its own task."""
    if cfg.task == "causal-lm" and cfg.data.response_column:
        return Instruction
    return TASKS[cfg.task]


def build_task(cfg: RunConfig, label_names: list[str]) -> Task:
    """The task of a run config, for a dataset with these labels."""
    return task_class(cfg).from_config(cfg, label_names)


def check_task(cfg: RunConfig) -> None:
    """Refuse a task setting that cannot work, before anything is loaded."""
    if cfg.task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    if cfg.data.response_column and cfg.task != "causal-lm":
        raise ConfigError("data.response_column (instruction data) needs task=causal-lm")
    if cfg.task == "causal-lm" and not cfg.data.response_column:
        CausalLM(
            ["_"] * len(cfg.data.label_words or ["_"]),
            cfg.data.template or "{text}",  # unset: built from the data (data.default_template)
            cfg.data.label_words,
        )


# ---------------------------------------------------------------- prepared once per process


@dataclass
class Prepared:
    """Data shared by the runs of a comparison: loaded, split and tokenized once."""

    splits: Splits
    tokenizer: object
    task: Task
    train: Encoded
    validation: Encoded
    test: Encoded


_CACHE: dict[tuple, Prepared] = {}


def prepare_data(cfg: RunConfig) -> Prepared:
    """Load, split and encode the data for ``cfg`` with its task (cached per data config,
    model and task within the process)."""
    key = (json.dumps(vars(cfg.data), sort_keys=True), cfg.model.name, cfg.task)
    if key not in _CACHE:
        splits = load_splits(cfg.data)
        tok = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
        how = "data.template"
        if not cfg.data.template:  # a decoder's prompt built from the data (data.py)
            how = "built from the data; set data.template to change it"
            data = dataclasses.replace(cfg.data, template=splits.template)
            cfg = dataclasses.replace(cfg, data=data)
        task = build_task(cfg, splits.label_names)
        if task.template and is_main():
            print(f"tunelab: prompt template ({how}): {task.template!r}", file=sys.stderr)
        enc = [
            task.encode(s, tok, cfg.data.max_length)
            for s in (splits.train, splits.validation, splits.test)
        ]
        _CACHE[key] = Prepared(splits, tok, task, *enc)
    return _CACHE[key]


def data_info(data: Prepared, zero_shot: dict[str, Scores] | None = None) -> DataInfo:
    """Sizes and labels of the splits, and the floors a run must beat on validation and test:
    the majority class, and (for a decoder) the untrained model's zero-shot metrics."""
    train_labels, task = data.train.labels, data.task
    return DataInfo(
        dataset=data.splits.source,
        labels=data.splits.label_names,
        train=len(data.train),
        validation=len(data.validation),
        test=len(data.test),
        template=data.task.template or "",
        majority={
            "validation": Scores.of(task.baseline(train_labels, data.validation.labels)),
            "test": Scores.of(task.baseline(train_labels, data.test.labels)),
        }
        if data.splits.label_names
        else {},
        zero_shot=zero_shot or {},
    )
