"""The article's table, measured: each method at several training-set sizes
(`tunelab compare --train-sizes`), and its claims checked one by one.

The article (../seed-article) says:

| method | computational cost | efficacy | where it fits |
|---|---|---|---|
| full fine-tuning | high | high | large datasets |
| layer-wise LR decay | medium | medium | medium-size models |
| LoRA | low | high | large models |
| prompt tuning | low | medium | small datasets |

Cost is measured as training time and peak memory at the largest size, relative to full
fine-tuning; efficacy as test accuracy at the largest size; "where it fits" as the sizes at
which a method is the best or within ``WITHIN`` points of the best. Pure functions over run
records, like analysis.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.methods import method_class
from tunelab.report.analysis import COLUMNS, TIME_NOISE, estimate
from tunelab.report.stats import Estimate
from tunelab.results import RunRecord

WITHIN = 1.0  # points of test accuracy: "as good as the best" at a size
_COL = {c.key: c for c in COLUMNS}


@dataclass
class Point:
    method: str
    size: int
    n: int
    test: Estimate
    train_s: Estimate
    peak_mb: Estimate
    trainable: int
    contended: bool = False
    """A run here trained while another process used the CPU: its time says nothing."""


@dataclass
class Sizes:
    sizes: list[int]
    points: dict[str, list[Point]]  # method -> one point per size, ascending
    fits: dict[str, list[int]] = field(default_factory=dict)  # method -> sizes where it fits
    measured: list[dict] = field(default_factory=list)  # the measured table's rows
    claims: list[str] = field(default_factory=list)


def train_size(rec: RunRecord) -> int:
    return rec.data.train


def is_size_study(records: list[RunRecord]) -> bool:
    """Whether the successful runs (not tuning trials) span several training-set sizes."""
    return len({train_size(r) for r in records if r.ok and not r.is_trial}) > 1


def largest(records: list[RunRecord]) -> list[RunRecord]:
    """The runs at the largest training-set size (and every failed run): the main table."""
    ok = [r for r in records if r.ok and not r.is_trial]
    top = max((train_size(r) for r in ok), default=0)
    return [r for r in records if not r.ok or r.is_trial or train_size(r) == top]


def analyse_sizes(records: list[RunRecord]) -> Sizes | None:
    ok = [r for r in records if r.ok and not r.is_trial and r.test and r.test.accuracy is not None]
    if not is_size_study(ok):
        return None
    sizes = sorted({train_size(r) for r in ok})
    points: dict[str, list[Point]] = {}
    for method in dict.fromkeys(r.method for r in ok):
        for size in sizes:
            runs = [r for r in ok if r.method == method and train_size(r) == size]
            if runs:
                points.setdefault(method, []).append(
                    Point(
                        method,
                        size,
                        len(runs),
                        estimate(_COL["test_acc"], runs),
                        estimate(_COL["train_s"], runs),
                        estimate(_COL["peak_mb"], runs),
                        runs[0].params.trainable,
                        any(r.timing.contended for r in runs),
                    )
                )
    s = Sizes(sizes, points)
    s.fits = {m: fits_at(s, m) for m in points}
    s.measured = measured_rows(s)
    s.claims = claims(s)
    return s


def at(s: Sizes, method: str, size: int) -> Point | None:
    return next((p for p in s.points.get(method, []) if p.size == size), None)


def best_at(s: Sizes, size: int) -> float:
    return max(p.test.mean for m in s.points if (p := at(s, m, size)))


def fits_at(s: Sizes, method: str) -> list[int]:
    """Sizes at which the method is the best or within WITHIN points of the best."""
    return [p.size for p in s.points[method] if p.test.mean >= best_at(s, p.size) - WITHIN]


def _ratio(p: Point, ref: Point | None, key: str) -> float | None:
    if ref is None or not getattr(ref, key).mean:
        return None
    return getattr(p, key).mean / getattr(ref, key).mean


def measured_rows(s: Sizes) -> list[dict]:
    """One row per method at the largest size: time and memory against full fine-tuning,
    trainable parameters, test accuracy (and its gap to the best), the sizes where it fits."""
    top = s.sizes[-1]
    name = next((m for m in s.points if method_class(m).reference), "")
    ref = at(s, name, top) if name else None
    best = best_at(s, top)
    rows = []
    for method in s.points:
        p = at(s, method, top)
        if p is None:
            continue
        rows.append(
            {
                "method": method,
                "time": None
                if p.contended or (ref and ref.contended)
                else _ratio(p, ref, "train_s"),
                "memory": _ratio(p, ref, "peak_mb"),
                "train_s": p.train_s.mean,
                "peak_mb": p.peak_mb.mean,
                "trainable": p.trainable,
                "test": p.test,
                "gap": best - p.test.mean,
                "fits": s.fits[method],
                "article": method_class(method).article,
            }
        )
    return rows


def cost_word(row: dict) -> str:
    """high / medium / low cost from the time ratio to full fine-tuning (memory as a tie)."""
    t = row["time"]
    if t is None:
        return "?"
    if t >= 1 - TIME_NOISE:
        return "high"
    return "medium" if t >= 0.6 else "low"


def efficacy_word(row: dict) -> str:
    return "high" if row["gap"] <= WITHIN else "medium" if row["gap"] <= 5 else "low"


def fits_text(sizes: list[int], all_sizes: list[int]) -> str:
    if not sizes:
        return "no size"
    if sizes == all_sizes:
        return "every size"
    return ", ".join(f"{n:,}" for n in sizes) + " examples"


def claims(s: Sizes) -> list[str]:
    """Each of the article's claims, against the measurements: holds / does not hold /
    cannot be tested here, with the numbers."""
    out = []
    small, top = s.sizes[0], s.sizes[-1]
    halves = [p.test.half for pts in s.points.values() for p in pts if p.test.half]
    if halves and max(p.n for pts in s.points.values() for p in pts) == 1:
        out.append(
            f"One run per method and size: each accuracy carries a ±{min(halves):.1f} to "
            f"±{max(halves):.1f} point interval, so 'within {WITHIN:g} point' orderings among "
            f"the leading methods are not significant; run --seeds 3 to separate them"
        )
    for row in s.measured:
        art = method_class(row["method"]).article
        if art is None:
            continue
        m, (cost, eff, where) = row["method"], art
        if row["time"] is None and row["memory"] is not None:
            out.append(
                f"{m}, cost {cost}: cannot be tested from these runs: a run of {m} or of full "
                f"fine-tuning trained while another process used the CPU, so its time says "
                f"nothing about the method; rerun it alone"
            )
        if row["time"] is not None:
            measured = cost_word(row)
            verdict = "holds" if measured == cost else "does not hold"
            out.append(
                f"{m}, cost {cost}: {verdict}. Measured {row['time']:.2f}x full fine-tuning's "
                f"time and {row['memory']:.2f}x its peak memory, {row['trainable']:,} trainable "
                f"parameters ({measured} by this page's rule: time within 10% of full = high, "
                f"above 0.6x = medium, below = low)"
            )
        measured = efficacy_word(row)
        out.append(
            f"{m}, efficacy {eff}: {'holds' if measured == eff else 'does not hold'}. Test "
            f"accuracy {row['test'].mean:.2f}% at {top:,} examples, {row['gap']:.2f} points "
            f"below the best ({measured}: within {WITHIN:g} point = high, within 5 = medium)"
        )
        fits = s.fits[m]
        if "dataset" in where:
            size = top if "large" in where else small
            verdict = "holds" if size in fits else "does not hold"
            out.append(
                f"{m}, fits {where}: {verdict}. It is the best or within {WITHIN:g} point of the "
                f"best at {fits_text(fits, s.sizes)} ({'largest' if size == top else 'smallest'}"
                f" size measured: {size:,})"
            )
        else:
            out.append(
                f"{m}, fits {where}: cannot be tested with one model; run the same comparison "
                f"on a smaller and a larger model. On this model it fits at "
                f"{fits_text(fits, s.sizes)}"
            )
    return out
