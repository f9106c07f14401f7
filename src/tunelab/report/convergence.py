"""Was a run done learning when it stopped? A reading of its own curves, nothing else.

Each run carries a trend (``RunRecord.trend``: the same fixed validation subset scored
``train.trend_points`` times or more, see ``tunelab.trend``), or, for runs that validated often
enough on their own (tuning trials, older records), its validation curve. From it:

- **overfitting**: validation got worse after its best point, beyond the noise: the accuracy
  fell by more than one binomial standard error of the subset, or the loss rose more than
  ``LOSS_RISE`` (5%) above its lowest; the run keeps its best checkpoint, so its score stands,
  but more training would not help.
- **still learning**: over the last third of the points, validation improved beyond its noise
  (best accuracy above the best before by more than one binomial standard error), or the
  validation loss kept falling at the pace the learning rate bought before (its drop per unit
  of learning rate summed over steps at least ``KEEPS_PACE``, half, of the earlier one, and
  more than ``LOSS_DROP_MIN``, 0.2%: a decaying schedule flattens every curve at its end, so
  flat-looking is not converged when the learning rate, not the model, ran out), or the
  training loss was still falling steeply (its mean over the last third of the steps
  ``TRAIN_DROP``, 10%, below the middle third's). Its score says how far it got in this
  budget, not how good the method gets.
- **converged**: neither; or the run stopped on its own criterion (``train.until=converged``
  or ``train.patience``).
- **unknown**: fewer than three points.

The noise floors are deliberately those of *unpaired* scores (the same subset scored twice
differs less), so "still learning" is said only when the curve leaves little doubt.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from tunelab.results import RunRecord

LEARNING, CONVERGED, OVERFITTING, UNKNOWN = "still learning", "converged", "overfitting", "unknown"
LOSS_RISE, LOSS_DROP_MIN, KEEPS_PACE, TRAIN_DROP = 0.05, 0.002, 0.5, 0.10


@dataclass(frozen=True)
class Diagnosis:
    state: str  # LEARNING, CONVERGED, OVERFITTING or UNKNOWN
    why: str  # the numbers behind it, one clause


def trend_of(rec: RunRecord) -> tuple[list[int], list[float], list[float | None], int]:
    """(steps, losses, accuracies, examples per point): the probe trend when the run has one,
    else its validation curve (accuracies None for data without accuracy)."""
    if len(rec.trend) >= 2:
        pts = rec.trend
        acc = [p.get("accuracy") for p in pts]
        return [p["step"] for p in pts], [p["loss"] for p in pts], acc, pts[-1]["examples"]
    pts = [p for p in rec.curve if "val_loss" in p]
    acc = [p.get("val_accuracy") for p in pts]
    return [p["step"] for p in pts], [p["val_loss"] for p in pts], acc, rec.data.validation


def diagnose(rec: RunRecord) -> Diagnosis:
    """The run's state when it stopped (see the module doc for the rules)."""
    steps, loss, acc, n = trend_of(rec)
    k = len(steps)
    if rec.stopped_early:
        return Diagnosis(
            CONVERGED,
            f"stopped on its criterion at step {rec.steps}: no better validation in "
            f"{rec.config.train.stop_patience} validations after step {rec.best_step}",
        )
    if k < 3:
        return Diagnosis(UNKNOWN, f"only {k} validation point(s), too few to see a trend")
    head = k - max(1, round(k / 3))  # points before the last third
    a = [100 * x for x in acc] if all(x is not None for x in acc) else None
    found = _overfitting(steps, loss, a, n, head) or _learning(rec, steps, loss, a, n, head)
    return found or Diagnosis(
        CONVERGED, f"validation flat over the last third of training ({k} points)"
    )


def noise_pt(acc_pct: float, n: int) -> float:
    """One binomial standard error of an accuracy (in points) over ``n`` examples."""
    p, n = acc_pct / 100, max(n, 1)
    return 100 * math.sqrt(max(p * (1 - p), 0.25 / n) / n)


def _overfitting(steps, loss, a, n, head) -> Diagnosis | None:
    k = len(steps)
    if a is not None:
        best_i = max(range(k), key=a.__getitem__)
        noise = noise_pt(a[best_i], n)
        if best_i < k - 1 and a[best_i] - a[-1] > noise:
            return Diagnosis(
                OVERFITTING,
                f"validation accuracy peaked at step {steps[best_i]} ({a[best_i]:.1f}%) and "
                f"fell to {a[-1]:.1f}% by step {steps[-1]} (noise ±{noise:.1f} pt)",
            )
    low_i = min(range(k), key=loss.__getitem__)
    if low_i < head and loss[-1] > loss[low_i] * (1 + LOSS_RISE):
        return Diagnosis(
            OVERFITTING,
            f"validation loss was lowest at step {steps[low_i]} ({loss[low_i]:.3f}) and rose "
            f"to {loss[-1]:.3f} by step {steps[-1]}",
        )
    return None


def _learning(rec, steps, loss, a, n, head) -> Diagnosis | None:
    if a is not None:
        gain, noise = max(a[head:]) - max(a[:head]), noise_pt(max(a[:head]), n)
        if gain > noise:
            return Diagnosis(
                LEARNING,
                f"validation accuracy still rising: {max(a[head:]):.1f}% in the last third of "
                f"training against {max(a[:head]):.1f}% before (+{gain:.1f} pt, noise "
                f"±{noise:.1f})",
            )
    pace = lr_paced_drop(rec, steps, loss, head)
    if pace is not None:
        before, after, drop = pace
        if drop > LOSS_DROP_MIN * loss[head - 1] and after >= KEEPS_PACE * before:
            return Diagnosis(
                LEARNING,
                f"validation loss still falling at its earlier pace for the learning rate "
                f"spent: {loss[head - 1]:.3f} at step {steps[head - 1]}, {min(loss[head:]):.3f} "
                f"by step {steps[-1]} ({after / before:.0%} of the earlier drop per unit of "
                f"learning rate)",
            )
    fall = train_loss_fall(rec)
    if fall is not None and fall > TRAIN_DROP:
        return Diagnosis(
            LEARNING,
            f"training loss still falling steeply ({100 * fall:.0f}% lower over the last third "
            f"of training than over the middle third)",
        )
    return None


def lr_at_steps(rec: RunRecord) -> dict[int, float]:
    """The learning rate the run logged, by step (every log window and validation)."""
    return {m["step"]: m["lr"] for m in rec.metrics if "lr" in m and "step" in m}


def lr_area(known: dict[int, float], a: int, b: int) -> float:
    """Learning rate summed over steps (a, b], linear between logged steps; steps when the
    run logged none (an older record)."""
    if not known:
        return float(b - a)
    xs = sorted(known)

    def at(x: int) -> float:
        if x <= xs[0]:
            return known[xs[0]] * (x / xs[0] if xs[0] else 1.0)  # warmup from 0
        if x >= xs[-1]:
            return known[xs[-1]]
        hi = bisect.bisect_left(xs, x)  # the first logged step at or after x
        x0, x1 = xs[hi - 1], xs[hi]
        return known[x0] + (known[x1] - known[x0]) * (x - x0) / (x1 - x0)

    return sum(at(x) for x in range(a + 1, b + 1))


def lr_paced_drop(
    rec: RunRecord, steps: list[int], loss: list[float], head: int
) -> tuple[float, float, float] | None:
    """Validation-loss drop per unit of learning rate (summed over steps) before the last
    third of the points and within it: a schedule that decays to zero flattens every curve at
    its end, so a run is still learning when its loss keeps falling at the pace its earlier
    learning rate bought; and the drop within the last third. None when the loss did not
    fall before the last third."""
    known = lr_at_steps(rec)
    d_head, d_tail = loss[0] - loss[head - 1], loss[head - 1] - min(loss[head:])
    a_head, a_tail = (
        lr_area(known, steps[0], steps[head - 1]),
        lr_area(known, steps[head - 1], steps[-1]),
    )
    if d_head <= 0 or a_head <= 0 or a_tail <= 0:
        return None
    return d_head / a_head, d_tail / a_tail, d_tail


def train_loss_fall(rec: RunRecord) -> float | None:
    """How much lower the mean training loss of the last third of the run's steps is than
    that of the middle third (a fraction), or None without enough logged windows."""
    rows = [m for m in rec.metrics if "train_loss" in m]
    if not rows or rec.steps < 3:
        return None
    third = rec.steps / 3
    mid = [m["train_loss"] for m in rows if third < m["step"] <= 2 * third]
    last = [m["train_loss"] for m in rows if m["step"] > 2 * third]
    if not mid or not last:
        return None
    m, la = sum(mid) / len(mid), sum(last) / len(last)
    return 1 - la / m if m > 0 else None


def row_state(runs: list[RunRecord]) -> str:
    """The states of a method's runs in one cell: "converged", or "still learning (1 of 3)"."""
    states = [diagnose(r).state for r in runs]
    out = []
    for st in dict.fromkeys(states):
        n = states.count(st)
        out.append(st if n == len(states) else f"{st} ({n} of {len(states)})")
    return ", ".join(out)


def still_learning(runs: list[RunRecord]) -> list[tuple[RunRecord, Diagnosis]]:
    """The runs (of a method) that were still learning when their budget ended."""
    out = [(r, diagnose(r)) for r in runs]
    return [(r, d) for r, d in out if d.state == LEARNING]


def settle_command(runs: list[RunRecord]) -> str:
    """What to run so each method reaches its own convergence: the same comparison with
    train.until=converged and a cap of 10x the epochs it had (at least 10), or a tune."""
    epochs = max((r.epochs for r in runs), default=1.0)
    cap = max(10, math.ceil(10 * epochs))
    return (
        f"rerun the comparison with the same settings plus `train.until=converged "
        f"train.epochs={cap}` (each method trains until its validation stops improving, at "
        f"most {cap} epochs, and keeps its best checkpoint), or tune each method with "
        f"`tunelab compare --tune`"
    )
