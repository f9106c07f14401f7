"""Intervals and estimates: what a number measured a few times, or over a few hundred
examples, can claim. Used by the comparison (analysis) and the size study (sizes) alike."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Estimate:
    """A mean and the half-width of its 95% interval (0 = no interval available)."""

    mean: float
    half: float = 0.0
    lo: float | None = None
    """Bounds of an interval not centred on the mean (Wilson's); None: mean -/+ half."""
    hi: float | None = None

    @property
    def low(self) -> float:
        return self.mean - self.half if self.lo is None else self.lo

    @property
    def high(self) -> float:
        return self.mean + self.half if self.hi is None else self.hi


def t95(df: int) -> float:
    """Two-sided 95% Student-t quantile for any degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def ci95(values: list[float]) -> Estimate:
    """Mean and t-interval half-width over seeds (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Estimate(mean, 0.0)
    return Estimate(mean, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def binomial(percent: float, n: int) -> Estimate:
    """An accuracy (in %) measured on n examples with its 95% Wilson score interval (scipy's),
    which stays honest near 0% and 100%: not centred on the accuracy, so ``lo`` / ``hi`` carry
    it, and ``half`` is half its width."""
    if n <= 0:
        return Estimate(percent)
    from scipy.stats import binomtest

    ci = binomtest(round(percent / 100 * n), n).proportion_ci(0.95, method="wilson")
    lo, hi = 100 * ci.low, 100 * ci.high
    return Estimate(percent, (hi - lo) / 2, lo, hi)


def same(a: Estimate, b: Estimate) -> bool:
    """Whether two estimates are indistinguishable at 95% (gap within the combined interval)."""
    return abs(a.mean - b.mean) <= math.hypot(a.half, b.half)


def close(a: float, b: float, noise: float) -> bool:
    """Whether two costs are within a relative noise floor of each other."""
    return abs(a - b) <= noise * max(abs(a), abs(b))
