"""The loop's part in the convergence diagnosis: enough points on each run's learning curve.

A run validates on the whole validation split ``evals_per_epoch`` times per epoch (those
validations choose the best checkpoint, and tune decides at them). A short run gets one or two,
too few to tell a method still learning from one that has converged. So, between them, the run
also scores a *probe*: the first ``train.probe_examples`` validation examples, the same subset
every time, ``train.trend_points`` times per run at least; at every full validation the probe is
scored too (read off the full scores when the subset is the whole split), so every point of the
trend compares the same examples. Probes never choose a checkpoint. A run whose full
validations are frequent enough (tune's trials) has no probes and no trend: its curve is the
trend. Its reading (still learning / converged / overfitting): ``tunelab.report.convergence``."""

from __future__ import annotations

import time
from collections.abc import Callable

from tunelab.config import TrainConfig
from tunelab.results import Scores


def probe_every(tc: TrainConfig, total_steps: int, eval_every: int) -> int:
    """Optimizer steps between probes, or 0 when the full validations are frequent enough."""
    if not tc.trend_points:
        return 0
    every = max(1, total_steps // tc.trend_points)  # floor: at least trend_points points
    return every if every < eval_every else 0


def add_point(pg, evaluate: Callable, split, n: int, full: Scores | None = None) -> dict:
    """Score the probe subset of ``split`` (``full``'s scores when it is the whole split) and
    append the point to ``pg.trend``; its time counts as evaluation time."""
    probe = split.head(n)
    t0 = time.perf_counter()
    scores = full if full is not None and len(probe) == len(split) else evaluate(probe, "probe")
    pg.eval_time += time.perf_counter() - t0
    point = {"step": pg.step, "examples": len(probe), **scores.as_dict()}
    pg.trend.append(point)
    return point


def probe(s, pg, logger, full: Scores | None = None) -> None:
    """One point of a run's trend (``s``: train's Session), logged as ``probe_*`` metrics."""
    split, n = s.data.validation, s.cfg.train.probe_examples
    point = add_point(pg, s.evaluate, split, n, full)
    logger.log(pg.step, {f"probe_{k}": v for k, v in point.items() if k != "step"})
