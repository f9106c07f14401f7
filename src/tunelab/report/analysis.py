"""The comparison itself, as pure functions over run records: the table (mean and 95% interval
per method), the majority-class floor, verdicts, the recommendation, learning-curve series and
overfitting flags. Nothing here reads files or draws; every rule is unit-tested.

The claims follow what the numbers carry:
- uncertainty: with several seeds, a Student-t interval over seeds; with one seed, the test
  (or validation) set's own binomial interval over examples for accuracies;
- two methods differ only when the gap exceeds the combined interval (sqrt(h1^2 + h2^2));
  otherwise they are called the same;
- a method whose validation accuracy is not above the majority-class baseline beyond that
  baseline's binomial interval "did not learn": it is flagged, never ranked;
- CPU memory (process RSS) and time are compared only beyond a stated noise floor.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunelab.results import RunRecord

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    get: Callable[[RunRecord], float]
    better: str  # "max" or "min"
    digits: int
    split: str = ""  # "validation" / "test": an accuracy over that split's examples


COLUMNS = [
    Column("trainable", "trainable params", lambda r: r.params.trainable, "min", 0),
    Column("trainable_pct", "trainable %", lambda r: r.params.trainable_pct, "min", 3),
    Column("train_s", "train time (s)", lambda r: r.timing.train_s, "min", 1),
    Column("examples_per_s", "examples/s", lambda r: r.timing.examples_per_s, "max", 1),
    Column("peak_mb", "peak memory (MB)", lambda r: r.memory.peak_bytes / 2**20, "min", 0),
    Column("saved_mb", "saved size (MB)", lambda r: r.saved_bytes / 2**20, "min", 2),
    Column(
        "val_acc",
        "val accuracy %",
        lambda r: 100 * r.best_validation["accuracy"],
        "max",
        2,
        "validation",
    ),
    Column("test_acc", "test accuracy %", lambda r: 100 * r.test["accuracy"], "max", 2, "test"),
    Column("test_f1", "test macro-F1 %", lambda r: 100 * r.test["macro_f1"], "max", 2),
]
# a causal-LM run also shows its answer-token loss and perplexity on validation
LM_COLUMNS = [
    Column("val_loss", "val loss", lambda r: r.best_validation["loss"], "min", 3),
    Column("val_ppl", "val perplexity", lambda r: math.exp(r.best_validation["loss"]), "min", 2),
]


def columns_for(records: list[RunRecord]) -> list[Column]:
    causal = any(r.config.get("task") == "causal-lm" for r in records)
    return COLUMNS + LM_COLUMNS if causal else COLUMNS


def row_label(records: list[RunRecord]) -> Callable[[RunRecord], str]:
    """How runs group into rows: by method; by method, model and task when the records mix
    models or tasks (an encoder classifier and a decoder LM on one page)."""
    kinds = {(r.config.get("model", {}).get("name"), r.config.get("task")) for r in records}
    if len(kinds) <= 1:
        return lambda r: r.method

    def label(r: RunRecord) -> str:
        model = str(r.config.get("model", {}).get("name", "?")).rstrip("/").split("/")[-1]
        return f"{r.method} · {model} · {r.config.get('task', 'classification')}"

    return label


# Relative differences below these are noise, not findings (measured on this project's 2-core
# machine: CPU RSS of identical tensors differed by 9% between methods; step times drift up to
# ~15% between days and ~5% between runs of one comparison).
MEMORY_NOISE = {"process_rss_above_baseline": 0.15, "cuda_max_allocated": 0.02}
TIME_NOISE = 0.10
DISK_NOISE = 0.01


@dataclass(frozen=True)
class Estimate:
    """A mean and the half-width of its 95% interval (0 = no interval available)."""

    mean: float
    half: float = 0.0


@dataclass
class Row:
    """One method of the comparison: its successful runs summarised column by column."""

    method: str
    n: int
    values: dict[str, Estimate]
    learned: bool = True
    runs: list[RunRecord] = field(default_factory=list, repr=False)

    def __getitem__(self, key: str) -> Estimate:
        return self.values[key]


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


def binomial_half(percent: float, n: int) -> float:
    """95% half-width (points) of an accuracy measured on n examples (Wilson score interval,
    which stays honest near 0% and 100%)."""
    if n <= 0:
        return 0.0
    p, z2 = percent / 100, Z95**2
    return 100 * Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)


def estimate(col: Column, runs: list[RunRecord]) -> Estimate:
    """Several seeds: the seed interval. One seed: for an accuracy, the split's binomial
    interval over its examples; for anything else no interval."""
    values = [col.get(r) for r in runs]
    est = ci95(values)
    if len(values) == 1 and col.split:
        n = getattr(runs[0].data, col.split)
        est = Estimate(est.mean, binomial_half(est.mean, n))
    return est


def summarize_methods(records: list[RunRecord]) -> list[Row]:
    """Per method (in first-seen order): its successful runs summarised per column, and
    whether it learned anything (validation above the highest baseline)."""
    floor = majority(records)
    label, columns = row_label(records), columns_for(records)
    rows = []
    for name in dict.fromkeys(label(r) for r in records):
        ok = [r for r in records if label(r) == name and r.ok]
        if ok:
            causal = ok[0].config.get("task") == "causal-lm"
            values = {
                c.key: estimate(c, ok)
                for c in columns
                if (causal or c not in LM_COLUMNS) and measurable(c, ok)
            }
            row = Row(name, len(ok), values, runs=ok)
            row.learned = learned(row, floor_for(ok, floor))
            rows.append(row)
    return rows


def measurable(col: Column, runs: list[RunRecord]) -> bool:
    """Whether every run has this column (instruction data has no accuracy)."""
    try:
        for r in runs:
            col.get(r)
    except (KeyError, TypeError):
        return False
    return True


def baseline(rec: RunRecord, kind: str) -> dict[str, Estimate] | None:
    """A baseline of a record's data ("majority" or "zero_shot"): validation / test accuracy
    and test macro-F1 in %, accuracies with their binomial intervals."""
    m, d = getattr(rec.data, kind), rec.data
    if not m or not m.get("validation"):
        return None
    out = {}
    if "accuracy" in m["validation"]:
        val, test = 100 * m["validation"]["accuracy"], 100 * m["test"]["accuracy"]
        out["val_acc"] = Estimate(val, binomial_half(val, d.validation))
        out["test_acc"] = Estimate(test, binomial_half(test, d.test))
        out["test_f1"] = Estimate(100 * m["test"]["macro_f1"])
    if "loss" in m["validation"]:  # a model's own answer loss (zero-shot)
        out["val_loss"] = Estimate(m["validation"]["loss"])
        out["val_ppl"] = Estimate(math.exp(m["validation"]["loss"]))
    return out


def baselines(records: list[RunRecord]) -> dict[str, dict[str, Estimate]]:
    """The rows a method must beat: the majority class, and each decoder's untrained
    (zero-shot) label-word accuracy, from the first record that carries each."""
    out = {}
    ok = [r for r in records if r.ok]
    first = next((r for r in ok if r.data.majority), None)
    if first:
        out["majority class"] = baseline(first, "majority")
    for r in ok:
        model = str(r.config.get("model", {}).get("name", "?")).rstrip("/").split("/")[-1]
        name = f"zero-shot {model}"
        if r.data.zero_shot and name not in out:
            out[name] = baseline(r, "zero_shot")
    return out


def majority(records: list[RunRecord]) -> dict[str, Estimate] | None:
    """The majority-class baseline of the records' data (None if no record carries it)."""
    return baselines(records).get("majority class")


def floor_for(runs: list[RunRecord], majority_floor: dict[str, Estimate] | None):
    """The highest baseline these runs must beat on validation: the majority class, or their
    own model's zero-shot score when that is higher."""
    zero = baseline(runs[0], "zero_shot") if runs[0].data.zero_shot else None
    cands = [f for f in (majority_floor, zero) if f]
    if not cands:
        return None
    if all("val_acc" in f for f in cands):
        return max(cands, key=lambda f: f["val_acc"].mean)
    return min(cands, key=lambda f: f.get("val_loss", Estimate(math.inf)).mean)


def learned(row: Row, floor: dict[str, Estimate] | None) -> bool:
    """Validation accuracy above the majority class beyond the baseline's own interval."""
    if floor is None:
        return True
    if "val_acc" not in row.values or "val_acc" not in floor:  # a language model: its loss
        return "val_loss" not in floor or row["val_loss"].mean < floor["val_loss"].mean
    return row["val_acc"].mean > floor["val_acc"].mean + floor["val_acc"].half


def same(a: Estimate, b: Estimate) -> bool:
    """Whether two estimates are indistinguishable at 95% (gap within the combined interval)."""
    return abs(a.mean - b.mean) <= math.hypot(a.half, b.half)


def close(a: float, b: float, noise: float) -> bool:
    """Whether two costs are within a relative noise floor of each other."""
    return abs(a - b) <= noise * max(abs(a), abs(b))


def memory_noise(row: Row) -> float:
    kind = row.runs[0].memory.kind if row.runs else ""
    return MEMORY_NOISE.get(kind, MEMORY_NOISE["process_rss_above_baseline"])


def contended(row: Row) -> bool:
    """A run of this method trained while something else used the CPU (results.Timing)."""
    return any(run.timing.contended for run in row.runs)


def contention_note(rows: list[Row]) -> str:
    """Why training times are not compared, or "" when every run had its CPU."""
    hit = [
        f"{r.method} ({max(run.timing.others_load for run in r.runs):.1f} of "
        f"{r.runs[0].timing.cores} cores)"
        for r in rows
        if contended(r)
    ]
    if not hit:
        return ""
    return (
        f"Training times are not compared: other processes kept the CPU busy while some runs "
        f"trained (cores they used on average: {', '.join(hit)}), so those times say little "
        f"about the methods; rerun them alone to compare times."
    )


def time_close(a: Row, b: Row) -> bool:
    """Training times equal within noise: the seed intervals overlap or, with one seed each,
    they are within TIME_NOISE. Times of a run that shared its CPU are never told apart."""
    if contended(a) or contended(b):
        return True
    x, y = a["train_s"], b["train_s"]
    if x.half or y.half:
        return same(x, y)
    return close(x.mean, y.mean, TIME_NOISE)


def ranked(rows: list[Row]) -> list[Row]:
    """Rows that learned: the only ones ranked, best-marked and recommended."""
    return [r for r in rows if r.learned]


def best_of(rows: list[Row]) -> dict[str, float]:
    """Best mean per column among the rows that learned."""
    best = {}
    for col in COLUMNS + LM_COLUMNS:
        vals = [r[col.key].mean for r in ranked(rows) if col.key in r.values]
        if vals:
            best[col.key] = max(vals) if col.better == "max" else min(vals)
    return best


def reference(rows: list[Row]) -> Row | None:
    """What verdicts compare against: full fine-tuning if it learned, else the method with
    the best validation accuracy (test accuracy never chooses)."""
    good = ranked(rows)
    full = next((r for r in good if r.method == "full"), None)
    return full or max(good, key=score, default=None)


def score(r: Row) -> float:
    """Higher is better: validation accuracy, or minus the validation loss (LM data)."""
    return r["val_acc"].mean if "val_acc" in r.values else -r["val_loss"].mean


def verdicts(rows: list[Row], floor: dict[str, Estimate] | None = None) -> list[str]:
    """One sentence per method, each claim backed by the numbers (see the module doc)."""
    ref = reference(rows)
    lines = []
    for r in rows:
        head = f"{r.method}: {r['trainable_pct'].mean:.3g}% of the parameters trained"
        if not r.learned:
            f = floor_for(r.runs, floor) or {}
            if "val_acc" in r.values:
                what, base = f"validation accuracy {r['val_acc'].mean:.1f}%", f.get("val_acc")
                base = f" ({base.mean:.1f}%)" if base else ""
            else:
                what, base = f"validation loss {r['val_loss'].mean:.3f}", f.get("val_loss")
                base = f" ({base.mean:.3f})" if base else ""
            lines.append(
                f"{head}; did not learn: {what} does not beat its baseline{base} (the majority "
                f"class, or the untrained model's zero-shot score); not ranked."
            )
            continue
        if "test_acc" not in r.values:  # instruction data: the language model's own quality
            ppl = r.values.get("val_ppl")
            parts = [
                f"validation loss {r['val_loss'].mean:.3f}"
                + (f" (perplexity {ppl.mean:.2f})" if ppl else "")
            ]
            parts += ["the reference"] if r is ref else []
            lines.append(f"{head}, " + ", ".join(parts) + ".")
            continue
        parts = [f"test accuracy {r['test_acc'].mean:.1f}%"]
        parts += ["the reference"] if r is ref else _against(r, ref)
        lines.append(f"{head}, " + ", ".join(parts) + ".")
    return lines


def _against(r: Row, ref: Row) -> list[str]:
    name = "full fine-tuning" if ref.method == "full" else ref.method
    a, b = r["test_acc"], ref["test_acc"]
    diff, band = a.mean - b.mean, math.hypot(a.half, b.half)
    if same(a, b):
        parts = [f"the same test accuracy as {name} within noise ({diff:+.1f} pt, ±{band:.1f})"]
    else:
        parts = [f"{abs(diff):.1f} pt {'below' if diff < 0 else 'above'} {name} (±{band:.1f})"]
    if not close(r["peak_mb"].mean, ref["peak_mb"].mean, memory_noise(r)):
        parts += _relative(r["peak_mb"].mean, ref["peak_mb"].mean, "memory")
    if not time_close(r, ref):
        parts += _relative(r["train_s"].mean, ref["train_s"].mean, "training time")
    if not close(r["saved_mb"].mean, ref["saved_mb"].mean, DISK_NOISE):
        parts += _relative(r["saved_mb"].mean, ref["saved_mb"].mean, "disk space")
    return parts


def _relative(value: float, base: float, noun: str) -> list[str]:
    """'40% less memory' / '12x less disk space' / '15% more training time'."""
    if base <= 0 or value <= 0:
        return []
    if value < base:
        if value < base / 3:
            return [f"{base / value:.0f}x less {noun}"]
        return [f"{100 * (1 - value / base):.0f}% less {noun}"]
    if value > 2 * base:
        return [f"{value / base:.1f}x more {noun}"]
    return [f"{100 * (value / base - 1):.0f}% more {noun}"]


def recommendation(rows: list[Row], tolerance: float = 1.0) -> str:
    """The fastest-training method among those whose *validation* accuracy is within
    ``tolerance`` points of the best one, or indistinguishable from it; times within noise
    are a tie, broken by memory (beyond its noise floor), then by trainable parameters.
    Methods that did not learn never take part; test accuracy never does."""
    good = ranked(rows)
    if not good:
        if rows:
            return "No recommendation: no method beat the majority-class baseline on validation."
        return "No recommendation: no successful runs."
    if not all("val_acc" in r.values for r in good):
        return _by_loss(good)
    top = max(good, key=lambda r: r["val_acc"].mean)
    best = top["val_acc"].mean
    near = [
        r
        for r in good
        if r["val_acc"].mean >= best - tolerance or same(r["val_acc"], top["val_acc"])
    ]
    pick, why = _fastest(near)
    others = [r.method for r in near if r is not pick]
    if len(good) == 1:
        scope = "the only method that beat the majority-class baseline"
    else:
        scope = (
            f"the {why} among the methods within {tolerance:g} pt (or the noise) of the best "
            f"validation accuracy ({best:.1f}%)"
        )
    text = (
        f"Recommendation: {pick.method}: {scope}; trains in {pick['train_s'].mean:.0f} s with "
        f"{pick['trainable_pct'].mean:.3g}% of the parameters"
    )
    text += f"; also within reach: {', '.join(others)}." if others else "."
    return text + (f" {contention_note(near)}" if contention_note(near) else "")


def _by_loss(good: list[Row], within: float = 0.02) -> str:
    """Language-model data: the fastest among the runs whose validation loss is within 2% of
    the lowest."""
    best = min(r["val_loss"].mean for r in good)
    near = [r for r in good if r["val_loss"].mean <= best * (1 + within)]
    pick, why = _fastest(near)
    note = contention_note(near)
    return (
        f"Recommendation: {pick.method}: the {why} among the methods within {100 * within:g}% "
        f"of the lowest validation loss ({best:.3f}); trains in {pick['train_s'].mean:.0f} s "
        f"with {pick['trainable_pct'].mean:.3g}% of the parameters." + (f" {note}" if note else "")
    )


def _fastest(near: list[Row]) -> tuple[Row, str]:
    """The fastest row, and why it won: on time, or on a tie-break when times are within
    noise (memory beyond its noise floor, then trainable parameters)."""
    fastest = min(near, key=lambda r: r["train_s"].mean)
    tied = [r for r in near if time_close(r, fastest)]
    if len(tied) == 1:
        return fastest, "fastest to train"
    if any(contended(r) for r in near):
        tied = near  # no time ranks a method when one of them shared its CPU
    low = min(tied, key=lambda r: r["peak_mb"].mean)
    if all(
        r is low or not close(r["peak_mb"].mean, low["peak_mb"].mean, memory_noise(r)) for r in tied
    ):
        names = ", ".join(r.method for r in tied)
        return low, f"least memory among the equally fast ({names}: times within noise)"
    pick = min(tied, key=lambda r: (r["trainable"].mean, r["train_s"].mean))
    names = ", ".join(r.method for r in tied)
    return pick, (
        f"fewest trainable parameters among the equally fast ({names}: times and memory "
        "within noise)"
    )


# ---------------------------------------------------------------- learning curves


def eval_points(rec: RunRecord) -> list[dict]:
    return [m for m in rec.metrics if "val_accuracy" in m]


def train_points(rec: RunRecord) -> list[dict]:
    return [m for m in rec.metrics if "train_loss" in m]


def train_acc_between(rec: RunRecord, lo: int, hi: int) -> float | None:
    """Training accuracy over the log windows in (lo, hi], weighted by steps."""
    rows = [t for t in train_points(rec) if lo < t["step"] <= hi]
    if not rows:
        return None
    weights = [t["step"] - p["step"] for p, t in zip([{"step": lo}] + rows, rows, strict=False)]
    return sum(w * t["train_accuracy"] for w, t in zip(weights, rows, strict=True)) / sum(weights)


def gap_series(rec: RunRecord) -> list[dict]:
    """Training accuracy (since the previous validation) minus validation accuracy."""
    out, prev = [], 0
    for p in eval_points(rec):
        tr = train_acc_between(rec, prev, p["step"])
        if tr is not None:
            val = p["val_accuracy"]
            out.append({"step": p["step"], "train": tr, "val": val, "gap": tr - val})
        prev = p["step"]
    return out


def overfit_flags(rec: RunRecord) -> list[int]:
    """Steps where validation accuracy stopped improving while training accuracy kept rising
    and already exceeded it (the train-validation gap widens)."""
    flags, best_val, last = [], None, None
    for g in gap_series(rec):
        if (
            best_val is not None
            and last is not None
            and g["val"] <= best_val
            and g["train"] > last["train"]
            and g["gap"] > max(last["gap"], 0.02)
        ):
            flags.append(g["step"])
        best_val = g["val"] if best_val is None else max(best_val, g["val"])
        last = g
    return flags


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by any other (lower cost and higher metric are better)."""
    front = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def failed_lines(records: list[RunRecord]) -> list[str]:
    """'name: status: reason' for every run that did not finish ok (one format everywhere)."""
    return [
        f"{r.name}: {r.status}: {r.reason or 'no reason recorded'}" for r in records if not r.ok
    ]


# ---------------------------------------------------------------- tuning


def is_trial(rec: RunRecord) -> bool:
    return bool(rec.tuning.get("study"))


def tuning_points(trials: list[RunRecord]) -> dict[str, list[dict]]:
    """Per method, its trials in order: lr, best validation accuracy reached, status, and
    the training examples spent up to and including that trial."""
    out: dict[str, list[dict]] = {}
    for rec in sorted(trials, key=lambda r: (r.tuning["study"], r.tuning["trial"])):
        points = out.setdefault(rec.tuning["study"], [])
        spent = (points[-1]["examples"] if points else 0) + rec.timing.train_examples_seen
        val = rec.best_validation.get("accuracy")
        points.append(
            {
                "trial": rec.tuning["trial"],
                "lr": rec.lr,
                "status": rec.status,
                "val": None if val is None else 100 * val,
                "examples": spent,
            }
        )
    return out


def best_so_far(points: list[dict]) -> list[tuple[int, float]]:
    """(examples spent, best validation accuracy so far) after each finished trial."""
    series, best = [], None
    for p in points:
        if p["val"] is not None and p["status"] == "ok":
            best = p["val"] if best is None else max(best, p["val"])
        if best is not None:
            series.append((p["examples"], best))
    return series


def tuned_caption(runs: list[RunRecord]) -> str:
    """'tuned (12 trials each)' when the compared runs come from tuned configurations."""
    trials = {r.tuning.get("trials") for r in runs if r.tuning.get("trials")}
    return f"tuned ({', '.join(str(t) for t in sorted(trials))} trials each)" if trials else ""


@dataclass
class Analysis:
    """Everything the report says, computed once from the records."""

    rows: list[Row]
    columns: list[Column]
    baselines: dict[str, dict[str, Estimate]]
    caption: str
    tuning: dict  # tuning.json as tune wrote it ({} when nothing was tuned)
    points: dict[str, list[dict]]  # tuning trials per method (tuning_points)
    floor: dict[str, Estimate] | None
    verdicts: list[str]
    recommendation: str
    failed: list[str]
    flags: dict[str, list[int]]  # run name -> steps flagged as overfitting
    sizes: Any = None  # report.sizes.Sizes when the runs span several training-set sizes

    @property
    def flagged(self) -> list[str]:
        return [f"{name}: from step {steps[0]}" for name, steps in self.flags.items() if steps]


def analyse(records: list[RunRecord], tuning: dict | None = None) -> Analysis:
    """The comparison of the runs, and the tuning of the trials (records tagged by tune)."""
    from tunelab.report import sizes  # it builds on this module's estimates

    study = sizes.analyse_sizes(records)  # several training-set sizes: the article's table
    if study:
        records = sizes.largest(records)  # and the main comparison at the largest size
    trials = [r for r in records if is_trial(r)]
    records = [r for r in records if not is_trial(r)]
    rows = summarize_methods(records)
    floor = majority(records)
    return Analysis(
        rows=rows,
        columns=columns_for(records),
        baselines=baselines(records),
        caption=tuned_caption(records),
        tuning=tuning or {},
        points=tuning_points(trials),
        floor=floor,
        verdicts=verdicts(rows, floor),
        recommendation=recommendation(rows),
        failed=failed_lines(records),
        flags={r.name: overfit_flags(r) for r in records if r.ok},
        sizes=study,
    )
