"""The verdicts' paired test: two methods scored on the same test rows are compared by an exact
McNemar test on the rows where they disagree, checked here against the binomial distribution
written out by hand and against Clopper-Pearson bounds from the beta distribution."""

from __future__ import annotations

import math

import pytest

from tests.test_analysis import record
from tunelab.report.analysis import summarize_methods
from tunelab.report.paired import mcnemar, paired
from tunelab.report.stats import same
from tunelab.report.verdicts import verdicts

ROWS = 1000


def rows_right(first_wrong: int, wrong: int, n: int = ROWS) -> str:
    """A right/wrong string: rows [first_wrong, first_wrong + wrong) wrong, the rest right."""
    return "".join("0" if first_wrong <= i < first_wrong + wrong else "1" for i in range(n))


def scored(method: str, correct: str, seed: int = 0, **data):
    rec = record(method, 0.8, correct.count("1") / len(correct), seed=seed)
    rec.config.train.seed = seed
    for key, value in data.items():
        setattr(rec.config.data, key, value)
    rec.test.correct = correct
    return rec


def exact_two_sided(b: int, c: int) -> float:
    """McNemar's exact test by hand: twice the smaller tail of Binomial(b + c, 1/2)."""
    d, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(d, i) for i in range(k + 1)) / 2**d)


@pytest.mark.parametrize("b, c", [(20, 0), (12, 5), (7, 7), (30, 12), (1, 0)])
def test_the_p_value_and_interval_follow_the_binomial(b, c):
    from scipy.stats import beta

    n = 500
    p, lo, hi = mcnemar(b, c, n)
    assert p == pytest.approx(exact_two_sided(b, c), rel=1e-9)
    d = b + c  # Clopper-Pearson for b of d, mapped to the difference (b - c) / n
    cp_lo = beta.ppf(0.025, b, d - b + 1) if b else 0.0
    cp_hi = beta.ppf(0.975, b + 1, d - b) if b < d else 1.0
    assert lo == pytest.approx(d / n * (2 * cp_lo - 1), abs=1e-9)
    assert hi == pytest.approx(d / n * (2 * cp_hi - 1), abs=1e-9)
    assert lo <= (b - c) / n <= hi


def test_no_disagreement_is_no_difference():
    assert mcnemar(0, 0, 100) == (1.0, 0.0, 0.0)


def test_pairing_tells_apart_what_unpaired_intervals_call_the_same():
    # B wrong on rows 0-219, A on rows 0-199: A is right wherever B is, and on 20 more rows
    full, lora = scored("full", rows_right(0, 220)), scored("lora", rows_right(0, 200))
    rows = summarize_methods([full, lora])
    assert same(rows[0]["test_acc"], rows[1]["test_acc"])  # 78.0% vs 80.0% on 1000 rows
    pair = paired([lora], [full])
    assert (pair.only_a, pair.only_b, pair.rows, pair.pairs) == (20, 0, ROWS, 1)
    assert pair.diff == pytest.approx(2.0) and pair.differs and pair.lo > 0
    line = verdicts(rows)[1]
    assert "2.0 pt above full fine-tuning" in line and "exact McNemar" in line, line
    assert "20 vs 0 rows" in line


def test_disagreement_both_ways_is_noise_and_said_so():
    # lora wrong on rows 0-199, full on rows 10-209: 10 rows each way
    full, lora = scored("full", rows_right(10, 200)), scored("lora", rows_right(0, 200))
    line = verdicts(summarize_methods([full, lora]))[1]
    assert "the same test accuracy as full fine-tuning within noise" in line
    assert "10 vs 10 rows" in line and "p = 1" in line, line


def test_seeds_are_paired_by_seed_and_pooled():
    runs_a = [scored("lora", rows_right(0, 200), seed=s) for s in (0, 1)]
    runs_b = [scored("full", rows_right(5 * s, 205), seed=s) for s in (0, 1, 2)]
    pair = paired(runs_a, runs_b)  # seed 2 of full has no partner
    assert pair.pairs == 2 and pair.rows == ROWS
    # seed 0: B wrong on 0-204, A on 0-199: 5 rows A only; seed 1: B wrong on 5-209: A right
    # on 200-209 where B is wrong (10), B right on 0-4 where A is wrong (5)
    assert (pair.only_a, pair.only_b) == (15, 5)
    assert pair.diff == pytest.approx(100 * 10 / 2000)


def test_runs_on_other_test_rows_fall_back_to_unpaired_intervals():
    full = scored("full", rows_right(0, 220))
    lora = scored("lora", rows_right(0, 200), split_seed=7)  # another test split
    assert paired([lora], [full]) is None
    assert paired([scored("lora", rows_right(0, 20, n=999))], [full]) is None  # other rows
    line = verdicts(summarize_methods([full, lora]))[1]
    assert "unpaired intervals" in line and "McNemar" not in line
    old = record("full", 0.8, 0.78)  # a record from before per-example scores
    assert old.test.correct is None and paired([lora], [old]) is None
