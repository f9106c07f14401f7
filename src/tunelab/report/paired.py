"""Two methods scored on the same test rows, compared row by row: the exact McNemar test.

Every method of a comparison is scored on the same test examples, so whether two accuracies
differ is a question about the rows where the two models disagree, not about two independent
samples: an unpaired interval on each accuracy (Wilson's, or a t-interval over seeds) ignores
that the rows the two get right are mostly the same ones, and calls differences noise that a
paired test resolves. With ``b`` rows only the first model gets right and ``c`` rows only the
second does, under "no difference" each discordant row is a fair coin: the two-sided exact
binomial test of ``b`` in ``b + c`` is McNemar's exact test. Runs with several seeds are
paired by seed (seed s of one method with seed s of the other) and their discordant counts
pooled. The interval for the accuracy difference is conditional on the discordant count:
the Clopper-Pearson interval of ``b / (b + c)`` mapped to ``(b - c) / n``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.results import RunRecord

TEST_NAME = "exact McNemar test on the same test rows"


@dataclass(frozen=True)
class Paired:
    """Method A against method B on the same rows (pooled over paired seeds)."""

    rows: int  # test rows per run
    pairs: int  # seed pairs pooled
    only_a: int  # rows A got right and B wrong
    only_b: int  # rows B got right and A wrong
    p: float  # two-sided exact binomial p-value on the discordant rows
    diff: float  # accuracy of A minus B, in points
    lo: float  # 95% interval of the difference, in points
    hi: float

    @property
    def differs(self) -> bool:
        """Whether the difference is significant at 5% (two-sided)."""
        return self.p < 0.05

    def clause(self) -> str:
        """How the verdict says which test it used: counts, p-value and interval."""
        seeds = f", {self.pairs} seeds pooled" if self.pairs > 1 else ""
        return (
            f"{self.diff:+.1f} pt, 95% CI {self.lo:+.1f} to {self.hi:+.1f}; exact McNemar on "
            f"the {self.rows} test rows{seeds}: {self.only_a} vs {self.only_b} rows only one "
            f"got right, p = {self.p:.2g}"
        )


def mcnemar(only_a: int, only_b: int, n: int) -> tuple[float, float, float]:
    """(p-value, low, high) for ``only_a`` vs ``only_b`` discordant rows among ``n`` scored
    rows: the exact two-sided binomial test and the difference's interval, as fractions."""
    from scipy.stats import binomtest

    d = only_a + only_b
    if d == 0:
        return 1.0, 0.0, 0.0
    t = binomtest(only_a, d, 0.5)
    ci = t.proportion_ci(0.95, method="exact")
    return float(t.pvalue), d / n * (2 * ci.low - 1), d / n * (2 * ci.high - 1)


def paired(a_runs: list[RunRecord], b_runs: list[RunRecord]) -> Paired | None:
    """A's runs against B's on the same test rows, paired by seed; None when the records do
    not allow it (no per-example scores, different test rows, no common seed)."""
    if len({_test_rows(r) for r in a_runs + b_runs}) != 1:
        return None  # not the same test rows (another dataset, split or eval subset)
    a, b = _by_seed(a_runs), _by_seed(b_runs)
    seeds = sorted(a.keys() & b.keys())
    if not seeds or len({len(a[s]) for s in seeds} | {len(b[s]) for s in seeds}) != 1:
        return None
    rows = len(a[seeds[0]])
    only_a = sum(x == "1" and y == "0" for s in seeds for x, y in zip(a[s], b[s], strict=True))
    only_b = sum(x == "0" and y == "1" for s in seeds for x, y in zip(a[s], b[s], strict=True))
    n = rows * len(seeds)
    p, lo, hi = mcnemar(only_a, only_b, n)
    diff = 100 * (only_a - only_b) / n
    return Paired(rows, len(seeds), only_a, only_b, p, diff, 100 * lo, 100 * hi)


def _by_seed(runs: list[RunRecord]) -> dict[int, str]:
    """Seed -> the test rows' right/wrong string, for runs that recorded one (and whose test
    split is the same: its size and order come from the data config, shared by a comparison)."""
    return {
        r.config.train.seed: r.test.correct for r in runs if r.test is not None and r.test.correct
    }


def _test_rows(r: RunRecord) -> str:
    """What decides a run's test rows: the data settings except the training-set size
    (nested subsets of one shuffled training split share validation and test)."""
    import json

    data = {k: v for k, v in vars(r.config.data).items() if k != "max_train_examples"}
    return json.dumps(data, sort_keys=True, default=str)
