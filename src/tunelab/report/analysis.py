"""The comparison's numbers, as pure functions over run records: the table (mean and 95%
interval per method), the majority-class floor, learning-curve series, overfitting flags and
the tuning points. The words built on them are in ``verdicts``, the intervals in ``stats``;
``summary.analyse`` puts it together. Nothing here reads files or draws; every rule is
unit-tested.

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
from collections.abc import Callable
from dataclasses import dataclass, field

from tunelab.report.stats import Estimate, binomial, ci95
from tunelab.results import RunRecord


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
        lambda r: 100 * r.best_validation.accuracy,
        "max",
        2,
        "validation",
    ),
    Column("test_acc", "test accuracy %", lambda r: 100 * r.test.accuracy, "max", 2, "test"),
    Column("test_f1", "test macro-F1 %", lambda r: 100 * r.test.macro_f1, "max", 2),
]
# a causal-LM run also shows its answer-token loss and perplexity on validation; any run that
# measured it, what it cost the model's general text (tunelab.forgetting: change of its loss,
# nats per token; a decoder's next-token loss, an encoder's masked-LM loss)
LM_COLUMNS = [
    Column("val_loss", "val loss", lambda r: r.best_validation.loss, "min", 3),
    Column("val_ppl", "val perplexity", lambda r: math.exp(r.best_validation.loss), "min", 2),
]
FORGETTING = Column("forgetting", "forgetting (Δ loss)", lambda r: float(r.forgetting.change),
                    "min", 3)  # fmt: skip


def model_short(r: RunRecord) -> str:
    """The model's last path part (a hub name's or a folder's)."""
    return str(r.config.model.name).rstrip("/").split("/")[-1]


# a mixture of experts also shows the parameters a token runs through, and all of them
MOE_COLUMNS = [
    Column("active", "active params / token", lambda r: r.params.active, "min", 0),
    Column("total", "total params", lambda r: r.params.total, "min", 0),
]


def columns_for(records: list[RunRecord]) -> list[Column]:
    causal = any(r.config.task == "causal-lm" for r in records)
    moe = any(0 < r.params.active < r.params.total for r in records)
    cols = COLUMNS[:2] + MOE_COLUMNS + COLUMNS[2:] if moe else COLUMNS
    forgot = any(measurable(FORGETTING, [r]) for r in records if r.ok)
    return cols + (LM_COLUMNS if causal else []) + ([FORGETTING] if forgot else [])


def row_label(records: list[RunRecord]) -> Callable[[RunRecord], str]:
    """How runs group into rows: by method; by method, model and task when the records mix
    models or tasks (an encoder classifier and a decoder LM on one page)."""
    kinds = {(r.config.model.name, r.config.task) for r in records}
    if len(kinds) <= 1:
        return lambda r: r.method

    def label(r: RunRecord) -> str:
        return f"{r.method} · {model_short(r)} · {r.config.task}"

    return label


# Relative differences below these are noise, not findings (measured on this project's 2-core
# machine: CPU RSS of identical tensors differed by 9% between methods; step times drift up to
# ~15% between days and ~5% between runs of one comparison).
MEMORY_NOISE = {"process_rss_above_baseline": 0.15, "cuda_max_allocated": 0.02}
TIME_NOISE = 0.10
DISK_NOISE = 0.01


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


def estimate(col: Column, runs: list[RunRecord]) -> Estimate:
    """Several seeds: the seed interval. One seed: for an accuracy, the split's binomial
    interval over its examples; for anything else no interval."""
    values = [col.get(r) for r in runs]
    est = ci95(values)
    if len(values) == 1 and col.split:
        est = binomial(est.mean, getattr(runs[0].data, col.split))
    if len(values) == 1 and col.key == "forgetting":  # its interval over the sample's passages
        f = runs[0].forgetting
        est = Estimate(f.change, (f.high - f.low) / 2, f.low, f.high)
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
            causal = ok[0].config.task == "causal-lm"
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
    except (AttributeError, TypeError):  # no such split scored, or no such metric
        return False
    return True


def baseline(rec: RunRecord, kind: str) -> dict[str, Estimate] | None:
    """A baseline of a record's data ("majority" or "zero_shot"): validation / test accuracy
    and test macro-F1 in %, accuracies with their binomial intervals."""
    m, d = getattr(rec.data, kind), rec.data
    if not m or not m.get("validation"):
        return None
    out, v, t = {}, m["validation"], m["test"]
    if v.accuracy is not None:
        val, test = 100 * v.accuracy, 100 * t.accuracy
        out["val_acc"] = binomial(val, d.validation)
        out["test_acc"] = binomial(test, d.test)
        out["test_f1"] = Estimate(100 * t.macro_f1)
    if v.loss is not None:  # a model's own answer loss (zero-shot)
        out["val_loss"] = Estimate(v.loss)
        out["val_ppl"] = Estimate(math.exp(v.loss))
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
        name = f"zero-shot {model_short(r)}"
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


def ranked(rows: list[Row]) -> list[Row]:
    """Rows that learned: the only ones ranked, best-marked and recommended."""
    return [r for r in rows if r.learned]


def best_of(rows: list[Row]) -> dict[str, float]:
    """Best mean per column among the rows that learned."""
    best = {}
    for col in COLUMNS + LM_COLUMNS + [FORGETTING] + MOE_COLUMNS:
        vals = [r[col.key].mean for r in ranked(rows) if col.key in r.values]
        if vals:
            best[col.key] = max(vals) if col.better == "max" else min(vals)
    return best


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


def tuning_points(trials: list[RunRecord], metric: str = "accuracy") -> dict[str, list[dict]]:
    """Per method, its trials in order: lr, best validation accuracy reached, status, the
    training examples spent up to and including that trial; the tuning objective's value
    (x100 unless a loss) and forgetting (when the trial measured it)."""
    out: dict[str, list[dict]] = {}
    for rec in sorted(trials, key=lambda r: (r.tuning.study, r.tuning.trial)):
        points = out.setdefault(rec.tuning.study, [])
        spent = (points[-1]["examples"] if points else 0) + rec.timing.train_examples_seen
        val = rec.best_validation.accuracy if rec.best_validation else None
        points.append(
            {
                "trial": rec.tuning.trial,
                "lr": rec.lr,
                "status": rec.status,
                "val": None if val is None else 100 * val,
                "examples": spent,
                "value": _objective(rec, metric),
                "forgetting": rec.forgetting.change if rec.forgetting else None,
            }
        )
    return out


def _objective(rec: RunRecord, metric: str) -> float | None:
    v = rec.best_validation.value(metric) if rec.best_validation else None
    return None if v is None or math.isnan(v) else v * (1 if metric == "loss" else 100)


def trial_leaders(trials: list[RunRecord]) -> list[Row]:
    """Per studied method, its best trial on validation (finished or pruned: both validated),
    as a Row named "<method> (trial n)": the accuracy with its binomial interval over the
    validation subset the trials were scored on, or the loss (instruction data)."""
    out = []
    for study in dict.fromkeys(r.tuning.study for r in trials):
        mine = [r for r in trials if r.tuning.study == study and r.best_validation]
        if not mine:
            continue
        best = max(mine, key=trial_score)
        v = best.best_validation
        values = {"val_loss": Estimate(v.loss)} if v.loss is not None else {}
        if v.accuracy is not None:
            values["val_acc"] = binomial(100 * v.accuracy, best.data.validation)
        row = Row(f"{study} (trial {best.tuning.trial})", len(mine), values, runs=[best])
        out.append(row)
    return out


def trial_score(rec: RunRecord) -> float:
    v = rec.best_validation
    return v.accuracy if v.accuracy is not None else -v.value("loss")


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
    trials = {r.tuning.trials for r in runs if r.tuning and r.tuning.trials}
    return f"tuned ({', '.join(str(t) for t in sorted(trials))} trials each)" if trials else ""
