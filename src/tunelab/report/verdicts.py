"""The comparison's verdicts and recommendation in words: each sentence follows from the
numbers of ``analysis`` (estimates, floors, noise limits) and says no more than they carry."""

from __future__ import annotations

import math

from tunelab.methods import method_class
from tunelab.report.analysis import (
    DISK_NOISE,
    MEMORY_NOISE,
    TIME_NOISE,
    Row,
    floor_for,
    ranked,
)
from tunelab.report.convergence import (
    CONVERGED,
    LEARNING,
    OVERFITTING,
    diagnose,
    settle_command,
    still_learning,
)
from tunelab.report.paired import paired
from tunelab.report.stats import Estimate, close, same


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


def reference(rows: list[Row]) -> Row | None:
    """What verdicts compare against: full fine-tuning if it learned, else the method with
    the best validation accuracy (test accuracy never chooses)."""
    good = ranked(rows)
    full = next((r for r in good if method_class(r.method).reference), None)
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
                f"class, or the untrained model's zero-shot score); not ranked"
                + "".join(f"; {c}" for c in state_clauses(r))
                + "."
            )
            continue
        if "test_acc" not in r.values:  # instruction data: the language model's own quality
            ppl = r.values.get("val_ppl")
            parts = [
                f"validation loss {r['val_loss'].mean:.3f}"
                + (f" (perplexity {ppl.mean:.2f})" if ppl else "")
            ]
            parts += ["the reference"] if r is ref else []
            lines.append(f"{head}, " + ", ".join(parts + state_clauses(r)) + ".")
            continue
        parts = [f"test accuracy {r['test_acc'].mean:.1f}%"]
        parts += ["the reference"] if r is ref else _against(r, ref)
        lines.append(f"{head}, " + ", ".join(parts + state_clauses(r)) + ".")
    return lines


def state_clauses(r: Row) -> list[str]:
    """Where the method's runs were when they stopped (report.convergence): still learning
    and overfitting are said with their numbers; convergence is said when the run trained
    to it (train.until=converged) with the budget it took."""
    out = []
    for run in r.runs:
        d, seed = diagnose(run), (f" (seed {run.config.train.seed})" if r.n > 1 else "")
        if d.state == LEARNING:
            out.append(f"still learning when its budget ended{seed}: {d.why}")
        elif d.state == OVERFITTING:
            out.append(f"overfitting{seed}: {d.why} (its best checkpoint is the one scored)")
        elif d.state == CONVERGED and run.config.train.until == "converged":
            cap = "" if run.stopped_early else " (its cap)"
            out.append(
                f"trained to convergence{seed} in {run.steps} steps ({run.epochs:.3g} epochs"
                f"{cap}, {run.timing.train_s:.0f} s)"
            )
    return out


def budget_limited(rows: list[Row]) -> list[Row]:
    """Methods with a run still learning when its budget ended (learned or not yet)."""
    return [r for r in rows if still_learning(r.runs)]


def qualify(text: str, rows: list[Row], pick: Row | None, top: Row | None) -> str:
    """The recommendation as it stands when every method had converged (or only the pick,
    already the best, was still learning); else withheld: which methods were still learning,
    the leader in this budget, and the command that would settle it."""
    limited = budget_limited(rows)
    if not limited:
        return text
    if len(limited) == 1 and limited[0] is pick and pick is top:
        return text + (
            f" ({pick.method} was still learning when its budget ended: more training can "
            "only widen its lead.)"
        )
    names = ", ".join(r.method for r in limited)
    steps = sorted({run.steps for r in limited for run in r.runs})
    budget = f"{steps[0]} steps" if len(steps) == 1 else f"{steps[0]}-{steps[-1]} steps"
    runs = [run for r in rows for run in r.runs]
    within = text.removeprefix("Recommendation: ")
    return (
        f"No recommendation yet: the comparison is budget-limited. {names} "
        f"{'was' if len(limited) == 1 else 'were'} still learning when the budget ended "
        f"({budget}), so these numbers rank how fast each method learns in this budget, not "
        f"how good each gets. Leader in this budget: {within} To settle it, "
        f"{settle_command(runs)}."
    )


def _against(r: Row, ref: Row) -> list[str]:
    name = method_class(ref.method).title or ref.method
    parts = _accuracy_against(r, ref, name)
    if not close(r["peak_mb"].mean, ref["peak_mb"].mean, memory_noise(r)):
        parts += _relative(r["peak_mb"].mean, ref["peak_mb"].mean, "memory")
    if not time_close(r, ref):
        parts += _relative(r["train_s"].mean, ref["train_s"].mean, "training time")
    if not close(r["saved_mb"].mean, ref["saved_mb"].mean, DISK_NOISE):
        parts += _relative(r["saved_mb"].mean, ref["saved_mb"].mean, "disk space")
    return parts + _forgetting_against(r, ref, name)


def _forgetting_against(r: Row, ref: Row, name: str) -> list[str]:
    """'forgets 2.1x less than full fine-tuning (loss on general text +0.012 vs +0.025
    nats/token)': only where both intervals lie above zero and apart; else said as it is."""
    if "forgetting" not in r.values or "forgetting" not in ref.values:
        return []
    if r.runs[0].forgetting.kind != ref.runs[0].forgetting.kind:
        return []  # a masked-LM loss and a next-token loss are not one scale
    a, b = r["forgetting"], ref["forgetting"]
    both = f"general-text loss {a.mean:+.3f} vs {b.mean:+.3f} nats/token"
    if a.high < b.low and a.low > 0:
        return [f"forgets {b.mean / a.mean:.1f}x less than {name} ({both})"]
    if a.low > b.high and b.low > 0:
        return [f"forgets {a.mean / b.mean:.1f}x more than {name} ({both})"]
    if a.high < b.low or a.low > b.high:
        return [f"{'less' if a.mean < b.mean else 'more'} forgetting than {name} ({both})"]
    return [f"forgetting as {name} within noise ({both})"]


def _accuracy_against(r: Row, ref: Row, name: str) -> list[str]:
    """Test accuracy against the reference's: by the paired test on the same test rows
    (report.paired) where the records allow it, else by the two unpaired intervals."""
    pair = paired(r.runs, ref.runs)
    if pair is not None:
        if not pair.differs:
            return [f"the same test accuracy as {name} within noise ({pair.clause()})"]
        where = "below" if pair.diff < 0 else "above"
        return [f"{abs(pair.diff):.1f} pt {where} {name} ({pair.clause()})"]
    a, b = r["test_acc"], ref["test_acc"]
    diff, band = a.mean - b.mean, math.hypot(a.half, b.half)
    if same(a, b):
        return [f"the same test accuracy as {name} within noise ({diff:+.1f} pt, ±{band:.1f}, "
                "unpaired intervals)"]  # fmt: skip
    return [f"{abs(diff):.1f} pt {'below' if diff < 0 else 'above'} {name} (±{band:.1f}, "
            "unpaired intervals)"]  # fmt: skip


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


def trial_verdicts(leaders: list[Row]) -> list[str]:
    """What tuning trials alone show: each method's best trial on validation, the leader,
    and who is within its noise (the validation subset's interval) or outside it."""
    if not leaders:
        return []
    top = max(leaders, key=score)
    lines = []
    for r in sorted(leaders, key=score, reverse=True):
        acc = "val_acc" in r.values
        what = (
            f"validation accuracy {r['val_acc'].mean:.1f}% ± {r['val_acc'].half:.1f}"
            if acc
            else f"validation loss {r['val_loss'].mean:.3f}"
        )
        if r is top:
            where = "the leader"
        elif acc and same(r["val_acc"], top["val_acc"]):
            where = f"within noise of {top.method}"
        else:
            where = f"behind {top.method}, outside noise"
        lines.append(f"{r.method}: {what} on the tuning subset, best of {r.n} trial(s): {where}.")
    return lines


def tuning_only(root: str) -> str:
    """The recommendation of a folder holding only tuning trials: none yet, and how to get it."""
    return (
        "No recommendation yet: these are tuning trials, scored on a validation subset only "
        "(the test split is never scored while tuning). `tunelab compare --tune --out "
        f"{root}` with the same config reruns each method's best configuration on the full "
        "validation split and scores it on test once."
    )


def recommendation(rows: list[Row], tolerance: float = 1.0) -> str:
    """The fastest-training method among those whose *validation* accuracy is within
    ``tolerance`` points of the best one, or indistinguishable from it; times within noise
    are a tie, broken by memory (beyond its noise floor), then by trainable parameters.
    Methods that did not learn never take part; test accuracy never does."""
    good = ranked(rows)
    if not good:
        if not rows:
            return "No recommendation: no successful runs."
        text = "No recommendation: no method beat the majority-class baseline on validation."
        limited = budget_limited(rows)
        if limited:
            names = ", ".join(r.method for r in limited)
            runs = [run for r in rows for run in r.runs]
            text += f" Still learning when the budget ended: {names}; {settle_command(runs)}."
        return text
    if not all("val_acc" in r.values for r in good):
        return _by_loss(good, rows)
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
    text += f" {contention_note(near)}" if contention_note(near) else ""
    return qualify(text, rows, pick, top)


def _by_loss(good: list[Row], rows: list[Row], within: float = 0.02) -> str:
    """Language-model data: the fastest among the runs whose validation loss is within 2% of
    the lowest."""
    best = min(r["val_loss"].mean for r in good)
    near = [r for r in good if r["val_loss"].mean <= best * (1 + within)]
    pick, why = _fastest(near)
    note, top = contention_note(near), min(good, key=lambda r: r["val_loss"].mean)
    return qualify(
        f"Recommendation: {pick.method}: the {why} among the methods within {100 * within:g}% "
        f"of the lowest validation loss ({best:.3f}); trains in {pick['train_s'].mean:.0f} s "
        f"with {pick['trainable_pct'].mean:.3g}% of the parameters." + (f" {note}" if note else ""),
        rows,
        pick,
        top,
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
