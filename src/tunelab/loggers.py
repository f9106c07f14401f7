"""One way for metrics to leave the training loop: a ``Logger`` (the torchtune shape) with
sinks behind it. The loop calls ``log`` once per logging point, ``log_validation`` once per
validation and ``close`` at the end; which process writes is each sink's business.

(Named ``loggers`` rather than ``logging`` so it never shadows the standard library module.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

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
        self.bar.set_postfix(loss=f"{values['train_loss']:.4f}")

    def log_validation(self, step: int, values: dict[str, float]) -> None:
        shown = {k: f"{v:.4f}" for k, v in validation_of(values).items()}
        self.bar.set_postfix(shown)

    def close(self) -> None:
        self.bar.close()


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


def make_logger(run_dir: Path, accelerator, cfg, total_steps: int, step: int) -> Logger:
    """metrics.jsonl + a progress bar, + the configured accelerate tracker (if any)."""
    from tunelab.config import public_dict

    main = accelerator.is_main_process
    sinks = [JsonlLogger(run_dir, main), ConsoleLogger(run_dir.name, total_steps, step, main)]
    if cfg.tracker != "none":
        sinks.append(TrackerLogger(accelerator, public_dict(cfg)))
    return Loggers(*sinks)
