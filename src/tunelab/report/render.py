"""The comparison on paper: one Jinja2 template for the HTML page, Markdown and CSV (the csv
module) from the same analysis. Every number comes from ``analysis``; nothing is computed here
but its formatting."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path

import yaml

from tunelab.config import public_dict
from tunelab.errors import TunelabError
from tunelab.files import write_text
from tunelab.report import fronts, plots
from tunelab.report.analysis import Row, best_of
from tunelab.report.convergence import row_state
from tunelab.report.stats import Estimate
from tunelab.report.summary import Analysis, analyse
from tunelab.results import RunRecord, TuningSummary, load_records

LEGEND = (
    "Mean ± 95% interval: over seeds (Student t) for methods with several runs; with one run, "
    "the accuracies' binomial (Wilson) interval over the split's examples. Differences inside "
    "the combined interval are called the same. Green/bold: best in column among the methods "
    "that learned; a method whose validation accuracy does not beat the majority-class "
    "baseline is marked 'did not learn' and not ranked. Peak memory of the training steps "
    "(validation excluded): on CPU the process RSS above its level before the model was loaded "
    "(differences under 15% are noise), on CUDA max allocated. When stopped: each run's own "
    "learning curve read at its end (still learning / converged / overfitting; the rules: "
    "tunelab.report.convergence)."
)


def fmt(est: Estimate, digits: int) -> str:
    return f"{est.mean:,.{digits}f}" + (f" ± {est.half:,.{digits}f}" if est.half else "")


def _cells(row: Row, best: dict[str, float], mark: bool, columns) -> list[dict]:
    out = []
    for col in columns:
        if col.key not in row.values:  # e.g. perplexity of a classifier head
            out.append({"key": col.key, "value": "", "text": "", "best": False})
            continue
        est = row[col.key]
        is_best = mark and row.learned and est.mean == best.get(col.key)
        out.append(
            {"key": col.key, "value": repr(est.mean), "text": fmt(est, col.digits), "best": is_best}
        )
    return out


def _baseline_cells(floor: dict[str, Estimate], columns) -> list[dict]:
    return [
        {"key": c.key, "text": fmt(floor[c.key], c.digits) if c.key in floor else ""}
        for c in columns
    ]


def table(a: Analysis) -> dict:
    """The comparison table as plain data for any renderer."""
    best = best_of(a.rows)
    mark = sum(r.learned for r in a.rows) > 1
    rows = [
        {
            "method": r.method,
            "n": r.n,
            "learned": r.learned,
            "state": row_state(r.runs),
            "cells": _cells(r, best, mark, a.columns),
        }
        for r in a.rows
    ]
    header = [c.title for c in a.columns]
    bases = [{"name": k, "cells": _baseline_cells(v, a.columns)} for k, v in a.baselines.items()]
    return {"header": header, "rows": rows, "baselines": bases}


def markdown_table(a: Analysis) -> str:
    """The comparison table in Markdown: mean ± 95% interval, best of each column in bold."""
    t = table(a)
    lines = [
        "| method | runs | when stopped | " + " | ".join(t["header"]) + " |",
        "|---|---|---|" + "---|" * len(a.columns),
    ]
    for r in t["rows"]:
        cells = [f"**{c['text']}**" if c["best"] else c["text"] for c in r["cells"]]
        name = r["method"] + ("" if r["learned"] else " (did not learn)")
        lines.append(f"| {name} | {r['n']} | {r['state']} | " + " | ".join(cells) + " |")
    for b in t["baselines"]:
        cells = " | ".join(c["text"] for c in b["cells"])
        lines.append(f"| {b['name']} |  |  | {cells} |")
    return "\n".join(lines)


def csv_table(a: Analysis) -> str:
    """The comparison as CSV: per column its mean and 95% half-width; the baselines last."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = [h for c in a.columns for h in (c.key, c.key + "_ci95")]
    w.writerow(["method", "runs", "learned", "when_stopped", *keys])
    for r in a.rows:
        est = [r.values.get(c.key) for c in a.columns]
        vals = [x for e in est for x in ((e.mean, e.half) if e else ("", ""))]
        w.writerow([r.method, r.n, r.learned, row_state(r.runs), *vals])
    for name, base in a.baselines.items():
        est = [base.get(c.key) for c in a.columns]
        vals = [x for e in est for x in ((e.mean, e.half) if e else ("", ""))]
        w.writerow([name, "", "", "", *vals])
    return buf.getvalue()


def markdown(title: str, a: Analysis) -> str:
    lines = [f"# Fine-tuning comparison: {title}", ""]
    if a.caption:
        lines += [f"Each method {a.caption}: see Tuning below.", ""]
    if a.rows or a.verdicts:
        lines += [markdown_table(a), "", LEGEND, ""] if a.rows else []
        lines += [a.recommendation, "", "## Verdicts", ""] + [f"- {v}" for v in a.verdicts]
    if a.failed:
        lines += ["", "## Failed or stopped runs", ""] + [f"- {f}" for f in a.failed]
    lines += ["", "## Overfitting signal", ""]
    lines += [f"- {f}" for f in a.flagged] or ["- none detected"]
    if a.sizes:
        lines += size_markdown(a.sizes)
    if a.tuning:
        lines += ["", "## Tuning", "", tuning_text(a.tuning), ""]
        lines += [
            "| method | trials (complete / pruned / failed) | best validation | best "
            "configuration | examples | seconds | importances |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['method']} | {r['trials']} | {r['value']} | {r['best']} | {r['examples']}"
            f" | {r['seconds']} | {r['importances']} |"
            for r in tuning_rows(a.tuning)
        ]
    return "\n".join(lines) + "\n"


def _figure(fid: str, svg: str, caption: str):
    from markupsafe import Markup, escape

    return Markup(
        f'<figure class="plot" id="{fid}">{svg}<figcaption>{escape(caption)}</figcaption></figure>'
    )


# (id, cost column, x label, log x, caption)
PARETO = [
    (
        "pareto-params",
        "trainable",
        "trainable parameters (log)",
        True,
        "Test accuracy vs trainable parameters; dashed: Pareto front (nothing else is both "
        "smaller and better); x: did not learn.",
    ),
    ("pareto-time", "train_s", "training seconds", False, "Test accuracy vs training time."),
    ("pareto-memory", "peak_mb", "peak memory (MB)", False, "Test accuracy vs peak memory."),
    (
        "learning-forgetting",
        "forgetting",
        "forgetting: change of the general-text loss (nats/token)",
        False,
        "Learning against forgetting: test accuracy vs the change of the model's loss on a "
        "general-text sample (tunelab.forgetting); bars: 95% intervals on both axes.",
    ),
]
# (id, x, y, y label, training rows, caption)
CURVES = [
    (
        "curve-val-step",
        "step",
        "val_accuracy",
        "validation accuracy %",
        False,
        "Validation accuracy by step (band: seeds).",
    ),
    (
        "curve-val-time",
        "train_time_s",
        "val_accuracy",
        "validation accuracy %",
        False,
        "Validation accuracy by training wall-clock seconds.",
    ),
    ("curve-train-loss", "step", "train_loss", "training loss", True, "Training loss by step."),
]
GAP_CAPTION = (
    "Training minus validation accuracy (points); dotted lines: validation stopped improving "
    "while training accuracy rose."
)


def figures(records: list[RunRecord], a: Analysis) -> dict:
    ok = [r for r in records if r.ok]
    methods = [r.method for r in a.rows]
    scored = [r for r in a.rows if "test_acc" in r.values]  # instruction data has no accuracy
    pareto = [
        _figure(fid, plots.pareto_plot(scored, cost, xlabel, "test_acc", log), caption)
        for fid, cost, xlabel, log, caption in PARETO
        if scored and all(cost in r.values for r in scored)
    ]
    curves = [
        _figure(fid, plots.curve_plot(ok, methods, x, y, ylabel, train), caption)
        for fid, x, y, ylabel, train, caption in CURVES
    ]
    gap = _figure("overfit-gap", plots.gap_plot(ok, methods, a.flags), GAP_CAPTION)
    tuning = []
    if a.points:
        tuning = [
            _figure(
                "tune-lr",
                plots.lr_plot(a.points),
                "Validation accuracy (tuning subset) "
                "against learning rate, one point per trial; hollow: pruned.",
            ),
            _figure(
                "tune-progress",
                plots.progress_plot(a.points),
                "Best validation accuracy so far against the training examples spent on trials.",
            ),
        ]
    if a.tuning and any(m.front for m in a.tuning.methods.values()):
        on = {k: [p["trial"] for p in m.front] for k, m in a.tuning.methods.items()}
        label = f"validation {a.tuning.metric}" + ("" if a.tuning.metric == "loss" else " %")
        tuning.append(
            _figure("tune-forgetting", plots.front_plot(a.points, on, label), fronts.CAPTION)
        )
    size = []
    if a.sizes:
        size = [_figure("size-curve", plots.size_plot(a.sizes.points), SIZE_CAPTION)]
    return {
        "pareto": pareto,
        "curves": curves,
        "overfit_plot": gap,
        "tuning_plots": tuning,
        "size_plots": size,
    }


SIZE_CAPTION = (
    "Test accuracy against the number of training examples (nested subsets of one shuffled "
    "training set; the same validation and test sets). Band: 95% interval."
)
SIZE_HEADER = [
    "method",
    "article: cost",
    "measured: time / memory vs full",
    "trainable params",
    "article: efficacy",
    "measured: test accuracy % at the largest size",
    "article: fits",
    "measured: best or within 1 pt at",
]


def size_rows(s) -> list[list[str]]:
    """The article's table next to the measured one, one row per method."""
    from tunelab.report.sizes import fits_text

    rows = []
    for r in s.measured:
        art = r["article"] or ("-", "-", "-")
        cost = "-" if r["time"] is None else f"{r['time']:.2f}x / {r['memory']:.2f}x"
        rows.append(
            [
                r["method"],
                art[0],
                cost,
                f"{r['trainable']:,}",
                art[1],
                f"{fmt(r['test'], 2)} ({r['gap']:.2f} below best)"
                if r["gap"]
                else fmt(r["test"], 2) + " (best)",
                art[2],
                fits_text(r["fits"], s.sizes),
            ]
        )
    return rows


def size_markdown(s) -> list[str]:
    lines = ["", "## Training-set size: the article's table, measured", "", SIZE_CAPTION, ""]
    lines += ["| " + " | ".join(SIZE_HEADER) + " |", "|" + "---|" * len(SIZE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in size_rows(s)]
    lines += ["", "Claim by claim:", ""] + [f"- {c}" for c in s.claims]
    return lines


def tuning_text(t: TuningSummary) -> str:
    if t.rungs:
        how = (
            f"{t.trials_per_method} configurations per method (a seeded scrambled Sobol "
            f"sequence over its space), each with the same step budget and up to {t.evals} "
            f"validations on the first {t.eval_examples or 'all'} validation examples (a fixed "
            f"subset). Successive halving: every configuration trained to the first rung, the "
            f"best 1/{t.eta} went on from where they paused, rungs at validations "
            f"{', '.join(map(str, t.rungs))}; between rungs a method behind the leader "
            f"outside noise stopped (the trials column says where)"
        )
    else:
        how = (
            f"{t.trials_per_method} trials, each with the same step budget and {t.evals} "
            f"validations on the first {t.eval_examples or 'all'} validation examples (a fixed "
            f"subset). Optuna's TPE sampler (seeded) chose the configurations and "
            + (
                f"the {t.pruner} pruner stopped weak trials"
                if t.pruner != "none"
                else "every trial trained to the end (no pruner)"
            )
        )
    return (
        f"Every method had the same budget: {how} (objective: validation {t.metric}). The test "
        "split was never scored during tuning; the comparison reruns each method's best "
        "configuration on the full validation split and scores it on test once."
    ) + fronts.text(t)


def tuning_rows(t: TuningSummary) -> list[dict]:
    rows = []
    for method, m in t.methods.items():
        space = "; ".join(f"{k.split('.')[-1]}: {_domain(v)}" for k, v in m.space.items())
        best = ", ".join(f"{k.split('.')[-1]}={_num(v)}" for k, v in m.best_params.items())
        imp = ", ".join(f"{k.split('.')[-1]} {v:.2f}" for k, v in m.importances.items())
        scale = 1 if t.metric == "loss" else 100
        value = "-" if m.best_value is None else f"{scale * m.best_value:.4g}"
        n = m.trials
        rows.append(
            {
                "method": method,
                "space": space,
                "best": best,
                "value": value,
                "trials": f"{n.complete} / {n.pruned} / {n.fail}"
                + (f"; per rung {' / '.join(map(str, m.rungs))}" if m.rungs else "")
                + (f" ({m.stopped})" if m.stopped else ""),
                "examples": f"{m.examples:,}",
                "seconds": f"{m.seconds:.0f}",
                "importances": imp or "-",
            }
        )
    return rows


def _domain(d: list) -> str:
    kind, *args = d
    if kind in ("choice", "fixed"):
        return f"{kind} {args[0]}"
    return f"{kind} [{_num(args[0])}, {_num(args[1])}]"


def _num(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def samples(records: list[RunRecord]) -> list[tuple[str, list[dict]]]:
    """Each run's generations at its last validation (instruction data)."""
    out = []
    for r in records:
        last = next((p["samples"] for p in reversed(r.curve) if p.get("samples")), None)
        if last:
            out.append((r.name, last))
    return out


def setup_items(records: list[RunRecord]) -> list[tuple[str, str]]:
    first = next((r for r in records if r.ok), records[0])
    env, d = first.env, first.data
    pk = ", ".join(f"{k} {v}" for k, v in env.packages.items() if v)
    return [
        ("model", first.config.model.name),
        ("dataset", f"{d.dataset} (labels: {', '.join(d.labels)})"),
        (
            "splits",
            f"train {d.train}, validation {d.validation}, test {d.test}; best "
            "checkpoint chosen on validation only",
        ),
        (
            "hardware",
            f"{env.device} {env.gpu or ''} {env.cpu}, "
            f"{env.cpu_count} CPUs, {env.torch_threads} torch threads",
        ),
        ("packages", f"python {env.python}, {pk}"),
        ("code", env.git_commit or "unknown"),
    ]


def run_label(r: RunRecord) -> str:
    """A run's name; a tuning trial's by its method and number (its folder is just the number)."""
    return f"{r.tuning.study} trial {r.tuning.trial}" if r.is_trial else r.name


def render_html(root: Path, records: list[RunRecord], a: Analysis) -> str:
    import jinja2

    n_records = len(records)
    runs = [r for r in records if not r.is_trial] or records  # trials: the Tuning section

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True)
    return env.get_template("report.html.j2").render(
        title=root.name,
        root=str(root),
        stamp=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        n_runs=n_records,
        table=table(a),
        caption=a.caption,
        tuning_text=tuning_text(a.tuning) if a.tuning else "",
        tuning_rows=tuning_rows(a.tuning) if a.tuning else [],
        legend=LEGEND,
        recommendation=a.recommendation,
        verdicts=a.verdicts,
        failed=a.failed,
        flagged=a.flagged,
        setup=setup_items(runs),
        samples=samples(runs),
        configs=[
            (run_label(r), yaml.safe_dump(public_dict(r.config), sort_keys=False)) for r in runs
        ],
        trials_only=all(r.is_trial for r in records),
        sizes=a.sizes,
        size_header=SIZE_HEADER,
        size_rows=size_rows(a.sizes) if a.sizes else [],
        **figures(runs, a),
    )


def build_report(root: Path, output: Path | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` from the records under root."""
    root = Path(root)
    records = load_records(root)
    if not records:
        raise TunelabError(
            f"no run records (result.json) under {str(root)!r}; run "
            f"`tunelab compare --out {root}` first"
        )
    a = analyse(records, TuningSummary.read(root))
    out = Path(output) if output else root / "report.html"
    write_text(out, render_html(root, records, a))
    md = out.with_suffix(".md")
    write_text(md, markdown(root.name, a))
    return out, md
