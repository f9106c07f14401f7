"""Tuning against forgetting (``forgetting.objective``, ``forgetting.limit``): what a study is
told of a trial, the Pareto front of validation and forgetting, and each method's best trial
within the limit.

Trials then measure forgetting at their end (tunelab.forgetting, on their best weights); like
every other tuning decision, the front and the choice are made from the trials' run records on
disk, so every worker and a resumed tune see the same ones. Only trials that trained to the end
are on the front: successive halving and Optuna's pruners promote on validation alone and would
cut the slow, low-forgetting configurations the front is about, so the objective needs
``tune.pruner=none`` (a limit works with the Optuna pruners too: it chooses among the trials
that finished; halving finishes too few of them to choose from). The race is off: it compares
validation alone.
"""

from __future__ import annotations

import math

from tunelab.errors import ConfigError
from tunelab.results import RunRecord


def on(base) -> bool:
    """Whether tuning measures forgetting (an objective or a limit)."""
    fc = base.forgetting
    return fc.objective or fc.limit is not None


def setting(base) -> str:
    """How tuning used forgetting, for tuning.json: "", "objective", "limit 0.05", both."""
    fc = base.forgetting
    parts = (["objective"] if fc.objective else []) + (
        [f"limit {fc.limit:g}"] if fc.limit is not None else []
    )
    return ", ".join(parts)


def check(base, lm_head: bool) -> None:
    """Refuse a setting that cannot work, before any trial (``lm_head``: the task trains the
    model's language-model head, the one forgetting is measured with)."""
    fc, pruner = base.forgetting, base.tune.pruner
    if not on(base):
        return
    what = "forgetting.objective" if fc.objective else "forgetting.limit"
    if not fc.enabled:
        raise ConfigError(f"{what} needs forgetting.enabled=true (trials measure forgetting)")
    if not lm_head and _no_mlm_head(base):
        raise ConfigError(
            f"{what}: forgetting is measured with the model's language-model head (or an "
            f"encoder checkpoint's masked-LM head); this task trains a classification head on "
            f"a model without one (use task=causal-lm, or drop {what})"
        )
    if fc.limit is not None and not math.isfinite(fc.limit):
        raise ConfigError(f"forgetting.limit must be a finite number (nats/token), got {fc.limit}")
    allowed = ("none",) if fc.objective else ("none", "hyperband", "median")
    if pruner not in allowed:
        raise ConfigError(
            f"{what} needs tune.pruner={' or '.join(allowed)} (got {pruner}): "
            + ("the Pareto front needs every trial trained to the end; pruners promote on "
               "validation alone and would cut the low-forgetting ones"
               if fc.objective else
               "successive halving finishes one or two trials per method, too few to choose "
               "from within a limit")
        )  # fmt: skip


def _no_mlm_head(base) -> bool:
    from transformers import AutoConfig

    from tunelab.encoder_head import head_missing
    from tunelab.models import resolve

    mc = base.model
    config = AutoConfig.from_pretrained(resolve(mc.name), trust_remote_code=mc.trust_remote_code)
    return bool(head_missing(mc.name, config))


def directions(base, direction: str) -> list[str]:
    """The study's directions: the validation metric's, then forgetting's (down)."""
    return [direction, "minimize"] if base.forgetting.objective else [direction]


def forgetting_of(rec: RunRecord) -> float | None:
    f = rec.forgetting
    return None if f is None or f.change is None else float(f.change)


def told(rec: RunRecord, base, metric: str) -> float | list[float]:
    """What the study is told of a finished trial: its best validation value (and its
    forgetting, for the two-objective study)."""
    value = rec.best_validation.value(metric)
    if not base.forgetting.objective:
        return value
    f = forgetting_of(rec)
    if f is None:
        raise ValueError(f"trial {rec.name} has no forgetting: {rec.forgetting}")
    return [value, f]


def finished(records: list[RunRecord], metric: str) -> list[tuple[RunRecord, float, float]]:
    """Trials that trained to the end with a validation value and a forgetting."""
    out = []
    for r in records:
        f = forgetting_of(r)
        if r.ok and r.best_validation is not None and f is not None:
            v = r.best_validation.value(metric)
            if v is not None and not math.isnan(v):
                out.append((r, v, f))
    return sorted(out, key=lambda x: x[0].tuning.trial)


def front(records: list[RunRecord], metric: str, maximize: bool) -> list[dict]:
    """The Pareto front: the finished trials no other finished trial beats on both validation
    and forgetting (as good on one, better on the other), least forgetting first."""
    from tunelab.report.analysis import pareto_front

    sign = 1 if maximize else -1
    pts = finished(records, metric)
    on = set(pareto_front([(f, sign * v) for _, v, f in pts]))  # cost: forgetting
    keep = [(r, v, f) for r, v, f in pts if (f, sign * v) in on]
    return [
        {"trial": r.tuning.trial, "params": r.tuning.params, "value": v, "forgetting": f,
         "low": r.forgetting.low, "high": r.forgetting.high}
        for r, v, f in sorted(keep, key=lambda x: (x[2], x[0].tuning.trial))
    ]  # fmt: skip


def best(
    records: list[RunRecord], metric: str, maximize: bool, limit: float | None
) -> tuple[RunRecord | None, bool]:
    """The method's best finished trial within the limit (best validation; the lower trial
    number on a tie), and whether it is within it: with none within, the least-forgetting
    trial (it comes closest), said by False."""
    pts = finished(records, metric)
    sign = 1 if maximize else -1
    within = [p for p in pts if limit is None or p[2] <= limit]
    if within:  # a tie on validation: the one that forgets less (so it is on the front)
        return max(within, key=lambda p: (sign * p[1], -p[2], -p[0].tuning.trial))[0], True
    if pts:
        return min(pts, key=lambda p: (p[2], -sign * p[1], p[0].tuning.trial))[0], False
    return None, False
