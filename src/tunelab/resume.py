"""What survives an interruption: the loop's ``Progress``, the resumable checkpoint it writes
(at validations, every ``train.save_every_steps`` steps or ``train.save_every_minutes``
minutes, and when a signal stops the run), and ``restore`` for ``--resume``. The functions
take a ``Saver``: the little of a run they need (train's Session holds one)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab import checkpoint as checkpoint_file
from tunelab import results
from tunelab.measure import Window
from tunelab.results import STATE, Scores
from tunelab.sharding import sharded


@dataclass
class Saver:
    """What checkpointing, restoring and stopping need of a run, and nothing more."""

    run_dir: Path
    acc: Any  # accelerate.Accelerator
    model: torch.nn.Module  # as accelerate prepared it (unwrapped here)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    total_steps: int
    every_steps: int | None  # train.save_every_steps
    every_minutes: float | None  # train.save_every_minutes
    stop: Any = None  # guard.StopSignals: which signal asked the run to stop
    last_save: float = field(default_factory=time.monotonic)  # of the newest checkpoint


@dataclass
class Progress:
    """Everything the loop must carry across an interruption."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_time: float = 0.0
    train_cpu: float = 0.0
    train_other_cpu: float = 0.0
    eval_time: float = 0.0
    examples: int = 0
    tokens: int = 0
    best: Scores | None = None
    best_step: int = -1
    evals_since_best: int = 0
    curve: list = field(default_factory=list)
    trend: list = field(default_factory=list)  # probe-subset points (tunelab.trend)


def restore(s: Saver, resume: bool) -> tuple[Progress, dict]:
    """Progress and best weights of an interrupted run (``--resume``), or a fresh start."""
    if resume and (s.run_dir / STATE).exists():
        model = s.acc.unwrap_model(s.model)
        progress, best = checkpoint_file.load_checkpoint(s.run_dir, model, s.optimizer, s.scheduler)
        pg = Progress(**progress)
        pg.best = Scores(**pg.best) if pg.best else None  # the checkpoint holds plain dicts
        results.truncate_metrics(s.run_dir, pg.step)  # rows after the checkpoint come again
        return pg, best
    (s.run_dir / results.METRICS).unlink(missing_ok=True)
    return Progress(), {}


def stop_requested(s: Saver) -> bool:
    """Whether a signal asked the run to stop; with several processes, whether any process
    got one (all must stop at the same step, or the next all-reduce would wait forever)."""
    asked = s.stop.signum is not None
    if s.acc.num_processes > 1:
        flag = torch.tensor([float(asked)], device=s.acc.device)
        asked = bool(s.acc.reduce(flag, reduction="sum").item())
        if asked and s.stop.signum is None:
            s.stop.signum = 15  # another process got it: stop as for SIGTERM
    return asked


def checkpoint_due(s: Saver, pg: Progress) -> bool:
    """train.save_every_steps or train.save_every_minutes since the newest checkpoint (only
    the main process writes one, so the processes need not agree)."""
    if s.every_steps and pg.step % s.every_steps == 0:
        return True
    if not s.every_minutes:
        return False
    return time.monotonic() - s.last_save >= 60 * s.every_minutes


def checkpoint(s: Saver, pg: Progress, best: dict, win: Window | None = None) -> None:
    """Write the resumable state (main process only), atomically; mid-window, the window's
    examples, tokens and seconds so far are counted into the saved progress."""
    s.last_save = time.monotonic()
    model = s.acc.unwrap_model(s.model)
    if pg.step >= s.total_steps or not (s.acc.is_main_process or sharded(model)):
        return  # under FSDP every process gathers its shards, the main process writes
    progress = {**vars(pg), "best": pg.best.as_dict() if pg.best else None}
    if win is not None:
        progress["examples"] += win.examples
        progress["tokens"] += win.tokens
        progress["train_time"] += time.perf_counter() - win.start
    checkpoint_file.save_checkpoint(s.run_dir, model, s.optimizer, s.scheduler, progress, best,
                                    write=s.acc.is_main_process)  # fmt: skip
