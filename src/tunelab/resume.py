"""What survives an interruption: the loop's ``Progress``, the resumable checkpoint it writes
(at validations, every ``train.save_every_steps`` steps or ``train.save_every_minutes``
minutes, and when a signal stops the run), and ``restore`` for ``--resume``. The functions
take the training loop's ``Session`` (tunelab.train)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from tunelab import results
from tunelab.measure import Window
from tunelab.results import STATE


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
    best: dict = field(default_factory=dict)
    best_step: int = -1
    evals_since_best: int = 0
    curve: list = field(default_factory=list)


def restore(s, resume: bool) -> tuple[Progress, dict]:
    """Progress and best weights of an interrupted run (``--resume``), or a fresh start."""
    if resume and (s.run_dir / STATE).exists():
        model = s.acc.unwrap_model(s.model)
        progress, best = results.load_checkpoint(s.run_dir, model, s.optimizer, s.scheduler)
        pg = Progress(**progress)
        results.truncate_metrics(s.run_dir, pg.step)  # rows after the checkpoint come again
        return pg, best
    (s.run_dir / results.METRICS).unlink(missing_ok=True)
    return Progress(), {}


def stop_requested(s) -> bool:
    """Whether a signal asked the run to stop; with several processes, whether any process
    got one (all must stop at the same step, or the next all-reduce would wait forever)."""
    asked = s.stop.signum is not None
    if s.acc.num_processes > 1:
        flag = torch.tensor([float(asked)], device=s.acc.device)
        asked = bool(s.acc.reduce(flag, reduction="sum").item())
        if asked and s.stop.signum is None:
            s.stop.signum = 15  # another process got it: stop as for SIGTERM
    return asked


def checkpoint_due(s, pg: Progress) -> bool:
    """train.save_every_steps or train.save_every_minutes since the newest checkpoint (only
    the main process writes one, so the processes need not agree)."""
    tc = s.cfg.train
    if tc.save_every_steps and pg.step % tc.save_every_steps == 0:
        return True
    if not tc.save_every_minutes:
        return False
    return time.monotonic() - s.last_save >= 60 * tc.save_every_minutes


def checkpoint(s, pg: Progress, best: dict, win: Window | None = None) -> None:
    """Write the resumable state (main process only), atomically; mid-window, the window's
    examples, tokens and seconds so far are counted into the saved progress."""
    s.last_save = time.monotonic()
    if pg.step >= s.total_steps or not s.acc.is_main_process:
        return
    progress = dict(vars(pg))
    if win is not None:
        progress["examples"] += win.examples
        progress["tokens"] += win.tokens
        progress["train_time"] += time.perf_counter() - win.start
    model = s.acc.unwrap_model(s.model)
    results.save_checkpoint(s.run_dir, model, s.optimizer, s.scheduler, progress, best)
