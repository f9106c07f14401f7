"""One way for metrics to leave the training loop: a ``Logger`` (the torchtune shape) with
sinks behind it. The loop calls ``log`` once per logging point, ``log_validation`` once per
validation and ``close`` at the end; which process writes is each sink's business.

(Named ``loggers`` rather than ``logging`` so it never shadows the standard library module.)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from tunelab.errors import ConfigError
from tunelab.results import append_metrics, validation_of


class Logger(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None:
        """Training statistics at a logging point (loss, accuracy, throughput, lr, ...)."""

    def log_validation(self, step: int, values: dict[str, float]) -> None:
        """One validation: ``val_*`` metrics plus where it happened (epoch, train_time_s)."""

    def close(self) -> None: ...


class JsonlLogger:
    """``metrics.jsonl`` in the run folder: one row per call, the main process writes."""

    def __init__(self, run_dir: Path, main_process: bool):
        self.run_dir, self.main = Path(run_dir), main_process

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.main:
            append_metrics(self.run_dir, {"step": step, **values})

    log_validation = log

    def close(self) -> None:
        pass


class TrackerLogger:
    """accelerate's trackers (TensorBoard, wandb, mlflow, ...): ``train/*`` and ``val/*``
    scalars. accelerate itself logs from the main process only."""

    def __init__(self, accelerator, config: dict):
        self.acc = accelerator
        self.acc.init_trackers("tb", config=_flat(config))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.acc.log({f"train/{k}": v for k, v in values.items()}, step=step)

    def log_validation(self, step: int, values: dict) -> None:
        scores = {f"val/{k}": v for k, v in validation_of(values).items()}
        for i, s in enumerate(values.get("samples", [])):  # TensorBoard text
            scores[f"samples/{i}"] = f"**{s['prompt']}**\n\n{s['response']}"
        self.acc.log(scores, step=step)

    def close(self) -> None:
        self.acc.end_training()


class ConsoleLogger:
    """A tqdm progress bar on a terminal (main process only), moved at each logging point."""

    def __init__(self, name: str, total: int, initial: int, main_process: bool):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=name,
            unit="step",
            disable=not (sys.stderr.isatty() and main_process),
            dynamic_ncols=True,
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        self.bar.update(step - self.bar.n)
        if "train_loss" in values:
            self.bar.set_postfix(loss=f"{values['train_loss']:.4f}")

    def log_validation(self, step: int, values: dict[str, float]) -> None:
        shown = {k: f"{v:.4f}" for k, v in validation_of(values).items()}
        self.bar.set_postfix(shown)

    def close(self) -> None:
        self.bar.close()


PROGRESS_ENV = "TUNELAB_PROGRESS_SECONDS"  # seconds between plain progress lines (default 30)


class Heartbeat:
    """A plain progress line at least every ``every`` seconds when stderr is not a terminal
    (a log file, CI, a batch job), where no progress bar shows: step / total, the last logged
    loss and throughput, elapsed time and an ETA. It reads the loop's ``progress`` (its
    ``step``), so a run logging every 20 steps of a minute each still says where it is."""

    def __init__(self, name: str, total: int, progress: Any, every: float, stream=None):
        self.name, self.total, self.progress, self.every = name, total, progress, every
        self.stream = stream or sys.stderr
        self.first, self.t0 = progress.step, time.monotonic()
        self.last: dict[str, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="tunelab-progress")
        self.thread.start()

    def _beat(self) -> None:
        while not self.done.wait(self.every):
            if EvalProgress.current is None:  # an evaluation prints its own line
                print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        step, elapsed = self.progress.step, time.monotonic() - self.t0
        rate = (step - self.first) / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - step) / rate) if rate > 0 else "-"
        parts = [f"step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%)"]
        if "train_loss" in self.last:
            parts.append(f"loss {self.last['train_loss']:.4f}")
        if "examples_per_s" in self.last:
            parts.append(f"{self.last['examples_per_s']:.1f} examples/s")
        parts += [f"elapsed {_clock(elapsed)}", f"ETA {eta}"]
        return f"tunelab: {self.name}: " + ", ".join(parts)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.last.update(values)

    def log_validation(self, step: int, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)


class EvalProgress:
    """Progress of one evaluation (validation, probe, test, zero-shot, predict): a transient
    bar on a terminal, else a plain line every TUNELAB_PROGRESS_SECONDS: what is scored, how
    far (examples), elapsed and ETA. Main process only; while it runs, the training
    ``Heartbeat`` stays quiet (its step count does not move during an evaluation)."""

    current: EvalProgress | None = None

    def __init__(self, what: str, total: int, main_process: bool = True, stream=None):
        self.what, self.total, self.done_n, self.t0 = what, total, 0, time.monotonic()
        self.stream = stream or sys.stderr
        tty = self.stream.isatty() if hasattr(self.stream, "isatty") else False
        self.bar = tqdm(total=total, desc=f"scoring {what}", unit="ex", leave=False,
                        disable=not (tty and main_process), file=self.stream)  # fmt: skip
        every = progress_seconds() if main_process and not tty else 0
        self.stop = threading.Event()
        self.thread = None
        if every > 0:
            self.thread = threading.Thread(target=self._beat, args=(every,), daemon=True)

    def __enter__(self) -> EvalProgress:
        EvalProgress.current = self
        if self.thread:
            self.thread.start()
        return self

    def update(self, n: int) -> None:
        self.done_n += n
        self.bar.update(n)

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = self.done_n / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - self.done_n) / rate) if rate > 0 else "-"
        pct = 100 * self.done_n / max(1, self.total)
        return (
            f"tunelab: scoring {self.what}: {self.done_n}/{self.total} examples ({pct:.0f}%), "
            f"elapsed {_clock(elapsed)}, ETA {eta}"
        )

    def _beat(self, every: float) -> None:
        while not self.stop.wait(every):
            print(self.line(), file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(timeout=5)
        self.bar.close()
        EvalProgress.current = None


def progress_seconds() -> float:
    """Seconds between plain progress lines (TUNELAB_PROGRESS_SECONDS; 0 turns them off)."""
    raw = os.environ.get(PROGRESS_ENV, "").strip()
    try:
        return float(raw) if raw else 30.0
    except ValueError:
        raise ConfigError(f"{PROGRESS_ENV} must be a number of seconds, got {raw!r}") from None


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Loggers:
    """Several sinks behind one Logger."""

    def __init__(self, *sinks: Logger):
        self.sinks = sinks

    def log(self, step: int, values: dict[str, float]) -> None:
        for s in self.sinks:
            s.log(step, values)

    def log_validation(self, step: int, values: dict[str, float]) -> None:
        for s in self.sinks:
            s.log_validation(step, values)

    def close(self) -> None:
        for s in self.sinks:  # each one, even after another failed
            close_quietly(s)


def close_quietly(logger: Logger | None) -> None:
    """Close ``logger``; a failure to close is a warning on stderr, never an error that would
    replace the run's own outcome (the metrics are in metrics.jsonl already)."""
    if logger is None:
        return
    try:
        logger.close()
    except Exception as e:
        print(f"tunelab: warning: closing {type(logger).__name__} failed: {e}", file=sys.stderr)


def _flat(d: dict, prefix: str = "") -> dict:
    """Flatten nested config for tracker hyperparameters (scalars only)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def make_logger(run_dir: Path, accelerator, cfg, total_steps: int, progress: Any) -> Logger:
    """metrics.jsonl + a progress bar on a terminal (else a progress line every
    TUNELAB_PROGRESS_SECONDS, 30 by default), + the configured accelerate tracker (if any).
    ``progress``: the loop's Progress (its ``step`` is read)."""
    from tunelab.config import public_dict

    main, name, step = accelerator.is_main_process, run_dir.name, progress.step
    sinks: list = [JsonlLogger(run_dir, main), ConsoleLogger(name, total_steps, step, main)]
    every = progress_seconds()
    if main and not sys.stderr.isatty() and every > 0:
        sinks.append(Heartbeat(name, total_steps, progress, every))
    if cfg.tracker != "none":
        sinks.append(TrackerLogger(accelerator, public_dict(cfg)))
    return Loggers(*sinks)
