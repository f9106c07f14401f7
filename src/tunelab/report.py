"""The comparison as one self-contained HTML page (+ a Markdown summary), built only from the
run records on disk: result.json and metrics.jsonl of every run folder.

Plots are matplotlib SVGs inlined into the page: no scripts, no CDN, opens offline, light.
"""

from __future__ import annotations

import html
import io
import math
import statistics
from datetime import datetime, timezone
from pathlib import Path

import yaml

from tunelab.errors import TunelabError
from tunelab.results import find_runs, read_metrics, read_result, write_text

# two-sided 95% Student-t critical values by degrees of freedom (n - 1)
T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}

# (key, title, how to read it from a record, better: "max"/"min", digits)
COLUMNS = [
    ("trainable", "trainable params", lambda r: r["params"]["trainable"], "min", 0),
    ("trainable_pct", "trainable %", lambda r: r["params"]["trainable_pct"], "min", 3),
    ("train_s", "train time (s)", lambda r: r["timing"]["train_s"], "min", 1),
    ("examples_per_s", "examples/s", lambda r: r["timing"]["examples_per_s"], "max", 1),
    ("peak_mb", "peak memory (MB)", lambda r: r["memory"]["peak_bytes"] / 2**20, "min", 0),
    ("saved_mb", "saved size (MB)", lambda r: r["saved_bytes"] / 2**20, "min", 2),
    ("val_acc", "val accuracy %", lambda r: 100 * r["best_validation"]["accuracy"], "max", 2),
    ("test_acc", "test accuracy %", lambda r: 100 * r["test"]["accuracy"], "max", 2),
    ("test_f1", "test macro-F1 %", lambda r: 100 * r["test"]["macro_f1"], "max", 2),
]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval (0 for a single run)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    df = len(values) - 1
    t = T95.get(df) or T95[max(k for k in T95 if k <= df)]
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def load_runs(root: Path) -> list[dict]:
    """Every run record under ``root`` with its metrics rows attached (``_metrics``)."""
    runs = []
    for d in find_runs(root):
        rec = read_result(d)
        if rec is not None:
            rec["_metrics"] = read_metrics(d)
            rec["_dir"] = str(d)
            runs.append(rec)
    return runs


def summarize_methods(runs: list[dict]) -> list[dict]:
    """Per method: n runs, and for each column the mean and 95% CI over successful seeds."""
    out = []
    for method in dict.fromkeys(r["method"] for r in runs):
        ok = [r for r in runs if r["method"] == method and r.get("status") == "ok"]
        if not ok:
            continue
        row = {"method": method, "n": len(ok)}
        for key, _, get, _, _ in COLUMNS:
            row[key] = ci95([get(r) for r in ok])
        out.append(row)
    return out


def best_of(rows: list[dict]) -> dict[str, float]:
    best = {}
    for key, _, _, better, _ in COLUMNS:
        vals = [r[key][0] for r in rows]
        if vals:
            best[key] = max(vals) if better == "max" else min(vals)
    return best


def verdicts(rows: list[dict]) -> list[str]:
    """One sentence per method, generated from the numbers, relative to full fine-tuning
    (or to the most accurate method when full is absent)."""
    if not rows:
        return []
    ref = next((r for r in rows if r["method"] == "full"), None) or max(
        rows, key=lambda r: r["test_acc"][0]
    )
    ref_name = "full fine-tuning" if ref["method"] == "full" else ref["method"]
    lines = []
    for r in rows:
        acc = r["test_acc"][0]
        parts = [
            f"{r['trainable_pct'][0]:.3g}% of the parameters trained",
            f"test accuracy {acc:.1f}%",
        ]
        if r is not ref:
            diff = acc - ref["test_acc"][0]
            parts.append(f"{abs(diff):.1f} pt {'below' if diff < 0 else 'above'} {ref_name}")
            for key, noun in (
                ("peak_mb", "memory"),
                ("train_s", "training time"),
                ("saved_mb", "disk space"),
            ):
                parts += _relative(r[key][0], ref[key][0], noun)
            ci = r["test_acc"][1] + ref["test_acc"][1]
            if ci and abs(diff) < ci:
                parts.append("the accuracy gap is within the 95% intervals")
        else:
            parts.append("the reference")
        lines.append(f"{r['method']}: " + ", ".join(parts) + ".")
    return lines


def recommendation(rows: list[dict], tolerance: float = 1.0) -> str:
    """The fastest-training method whose *validation* accuracy is within ``tolerance`` points
    of the best one (test accuracy never takes part in choosing)."""
    if not rows:
        return "No recommendation: no successful runs."
    best = max(r["val_acc"][0] for r in rows)
    near = [r for r in rows if r["val_acc"][0] >= best - tolerance]
    pick = min(near, key=lambda r: (r["train_s"][0], r["peak_mb"][0]))
    others = [r["method"] for r in near if r is not pick]
    text = (
        f"Recommendation: {pick['method']}: the fastest to train ({pick['train_s'][0]:.0f} s, "
        f"{pick['trainable_pct'][0]:.3g}% of the parameters) among the methods within "
        f"{tolerance:g} pt of the best validation accuracy ({best:.1f}%)"
    )
    return text + (f"; also within reach: {', '.join(others)}." if others else ".")


def _relative(value: float, base: float, noun: str) -> list[str]:
    """'40% less memory' / '12x less bytes to store' / '15% more training time' (or nothing)."""
    if base <= 0 or value <= 0 or abs(value - base) / base < 0.01:
        return []
    if value < base:
        return [
            f"{base / value:.0f}x less {noun}"
            if value < base / 3
            else f"{100 * (1 - value / base):.0f}% less {noun}"
        ]
    return [
        f"{value / base:.1f}x more {noun}"
        if value > 2 * base
        else f"{100 * (value / base - 1):.0f}% more {noun}"
    ]


# ---------------------------------------------------------------- learning-curve helpers


def eval_points(rec: dict) -> list[dict]:
    return [m for m in rec["_metrics"] if "val_accuracy" in m]


def train_points(rec: dict) -> list[dict]:
    return [m for m in rec["_metrics"] if "train_loss" in m]


def train_acc_between(rec: dict, lo: int, hi: int) -> float | None:
    """Training accuracy over the log windows in (lo, hi], weighted by examples seen."""
    rows = [t for t in train_points(rec) if lo < t["step"] <= hi]
    if not rows:
        return None
    weights = [t["step"] - p["step"] for p, t in zip([{"step": lo}] + rows, rows, strict=False)]
    return sum(w * t["train_accuracy"] for w, t in zip(weights, rows, strict=True)) / sum(weights)


def gap_series(rec: dict) -> list[dict]:
    """Training accuracy (since the previous validation) minus validation accuracy."""
    out, prev = [], 0
    for p in eval_points(rec):
        tr = train_acc_between(rec, prev, p["step"])
        if tr is not None:
            out.append(
                {
                    "step": p["step"],
                    "train_time_s": p["train_time_s"],
                    "train": tr,
                    "val": p["val_accuracy"],
                    "gap": tr - p["val_accuracy"],
                }
            )
        prev = p["step"]
    return out


def overfit_flags(rec: dict) -> list[int]:
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


# ---------------------------------------------------------------- plots (inline SVG)


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog so it can sit inside HTML


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small and searchable
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5.2, 3.6))


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by any other (lower cost and higher metric are better)."""
    front = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def pareto_plot(rows: list[dict], cost: str, xlabel: str, metric: str, log: bool) -> str:
    fig, ax = _figure()
    pts = []
    for i, r in enumerate(rows):
        x, y = r[cost][0], r[metric][0]
        pts.append((x, y))
        ax.errorbar(
            x,
            y,
            yerr=r[metric][1] or None,
            fmt="o",
            color=COLORS[i % len(COLORS)],
            capsize=3,
            label=r["method"],
        )
        ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = pareto_front(pts)
    ax.step(
        [p[0] for p in front],
        [p[1] for p in front],
        where="post",
        color="#888",
        linestyle="--",
        linewidth=1,
        label="Pareto front",
    )
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy %" if metric == "test_acc" else "validation accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _svg(fig)


def curve_plot(
    runs: list[dict],
    methods: list[str],
    x: str,
    y: str,
    ylabel: str,
    train: bool = False,
) -> str:
    """One line per method (mean over seeds), seeds as a min-max band."""
    fig, ax = _figure()
    for i, method in enumerate(methods):
        recs = [r for r in runs if r["method"] == method and r["_metrics"]]
        series = [(train_points(r) if train else eval_points(r)) for r in recs]
        series = [s for s in series if s]
        if not series:
            continue
        n = min(len(s) for s in series)
        xs = [statistics.fmean(s[j][x] for s in series) for j in range(n)]
        ys = [[s[j][y] * (100 if "accuracy" in y else 1) for s in series] for j in range(n)]
        color = COLORS[i % len(COLORS)]
        ax.plot(
            xs,
            [statistics.fmean(v) for v in ys],
            marker="." if n < 30 else None,
            color=color,
            label=method,
        )
        if len(series) > 1:
            ax.fill_between(xs, [min(v) for v in ys], [max(v) for v in ys], color=color, alpha=0.2)
    ax.set_xlabel({"step": "optimizer step", "train_time_s": "training seconds"}[x])
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _svg(fig)


# ---------------------------------------------------------------- page

CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;
color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
td.best{background:#e3f4e1;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:12px}
figure.plot{margin:0;border:1px solid #eee;padding:6px}
figure.plot svg{width:480px;height:auto;display:block}
figcaption{font-size:12px;color:#555;max-width:480px}
.failed{color:#a00}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
.muted{color:#666;font-size:12px}
"""


def _cell(row: dict, key: str, digits: int, best: dict) -> str:
    mean, half = row[key]
    text = f"{mean:,.{digits}f}" + (f" ± {half:,.{digits}f}" if half else "")
    cls = ' class="best"' if math.isclose(mean, best.get(key, math.nan), rel_tol=1e-12) else ""
    return f'<td{cls} data-key="{key}" data-value="{mean!r}">{html.escape(text)}</td>'


def table_html(rows: list[dict]) -> str:
    best = best_of(rows)
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t, *_ in COLUMNS)
    body = []
    for r in rows:
        cells = "".join(_cell(r, k, d, best) for k, _, _, _, d in COLUMNS)
        body.append(
            f'<tr data-method="{r["method"]}"><td>{r["method"]}</td><td>{r["n"]}</td>{cells}</tr>'
        )
    return (
        f'<table id="comparison"><tr><th>method</th><th>runs</th>{head}</tr>'
        + "".join(body)
        + "</table>"
    )


def _figure_html(fid: str, svg: str, caption: str) -> str:
    return (
        f'<figure class="plot" id="{fid}">{svg}<figcaption>{html.escape(caption)}'
        f"</figcaption></figure>"
    )


def setup_html(runs: list[dict]) -> str:
    first = runs[0]
    env = first.get("env", {})
    d = first.get("data", {})
    pk = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
    items = [
        ("model", first["config"]["model"]["name"]),
        ("dataset", f"{d.get('dataset')} (labels: {', '.join(d.get('labels', []))})"),
        (
            "splits",
            f"train {d.get('train')}, validation {d.get('validation')}, "
            f"test {d.get('test')}; best checkpoint chosen on validation only",
        ),
        (
            "hardware",
            f"{env.get('device')} {env.get('gpu') or ''} {env.get('cpu')}, "
            f"{env.get('cpu_count')} CPUs, {env.get('torch_threads')} torch threads",
        ),
        ("packages", f"python {env.get('python')}, {pk}"),
        ("code", env.get("git_commit") or "unknown"),
    ]
    rows = "".join(
        f"<tr><td>{k}</td><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in items
    )
    configs = "".join(
        f"<details><summary>{html.escape(r['name'])} config</summary><pre>"
        f"{html.escape(yaml.safe_dump(r['config'], sort_keys=False))}</pre></details>"
        for r in runs
    )
    return f'<table id="setup">{rows}</table>{configs}'


def build_report(root: Path, output: Path | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` from the records under root."""
    root = Path(root)
    runs = load_runs(root)
    if not runs:
        raise TunelabError(
            f"no run records (result.json) under {str(root)!r}; run "
            f"`tunelab compare --out {root}` first"
        )
    rows = summarize_methods(runs)
    methods = [r["method"] for r in rows]
    ok_runs = [r for r in runs if r.get("status") == "ok"]
    failed = [r for r in runs if r.get("status") != "ok"]
    verdict = verdicts(rows)
    flags = {r["name"]: overfit_flags(r) for r in ok_runs}  # step lists, one per run
    plots = []
    if rows:
        plots = [
            _figure_html(
                "pareto-params",
                pareto_plot(rows, "trainable", "trainable parameters (log)", "test_acc", True),
                "Test accuracy vs trainable parameters; "
                "dashed: Pareto front (nothing else is both smaller and better).",
            ),
            _figure_html(
                "pareto-time",
                pareto_plot(rows, "train_s", "training seconds", "test_acc", False),
                "Test accuracy vs training time.",
            ),
            _figure_html(
                "pareto-memory",
                pareto_plot(rows, "peak_mb", "peak memory (MB)", "test_acc", False),
                "Test accuracy vs peak memory.",
            ),
        ]
        curves = [
            _figure_html(
                "curve-val-step",
                curve_plot(ok_runs, methods, "step", "val_accuracy", "validation accuracy %"),
                "Validation accuracy by step (band: seeds).",
            ),
            _figure_html(
                "curve-val-time",
                curve_plot(
                    ok_runs, methods, "train_time_s", "val_accuracy", "validation accuracy %"
                ),
                "Validation accuracy by training wall-clock seconds.",
            ),
            _figure_html(
                "curve-train-loss",
                curve_plot(ok_runs, methods, "step", "train_loss", "training loss", train=True),
                "Training loss by step.",
            ),
        ]
        overfit = _figure_html(
            "overfit-gap",
            _gap_plot(ok_runs, methods, flags),
            "Training minus validation accuracy (points); dotted lines: "
            "validation stopped improving while training accuracy rose.",
        )
    flagged = [f"{name}: from step {steps[0]}" for name, steps in flags.items() if steps]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>tunelab report: "
        f"{html.escape(root.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Fine-tuning comparison: {html.escape(root.name)}</h1>",
        f"<p class='muted'>Built {stamp} from {len(runs)} run records in "
        f"{html.escape(str(root))}. Every number below is read from those files.</p>",
        "<h2>Comparison</h2>",
        table_html(rows) if rows else "<p>No successful runs.</p>",
        "<p class='muted'>Mean ± 95% confidence interval over seeds (Student t); "
        "green: best in column. Peak memory of the training steps (validation excluded): "
        "on CPU the process RSS peak above its level before the model was loaded; on "
        "CUDA max allocated."
        "</p>",
        f"<p id='recommendation'><b>{html.escape(recommendation(rows))}</b></p>",
        "<h2>Verdicts</h2><ul id='verdicts'>"
        + "".join(f"<li>{html.escape(v)}</li>" for v in verdict)
        + "</ul>",
    ]
    if failed:
        parts.append(
            "<h2>Failed or stopped runs</h2><ul id='failed'>"
            + "".join(
                f"<li class='failed'>{html.escape(r['name'])}: {html.escape(r.get('status', '?'))}"
                f" — {html.escape(r.get('reason', 'no reason recorded'))}</li>"
                for r in failed
            )
            + "</ul>"
        )
    if rows:
        parts += [
            "<h2>Cost vs accuracy (Pareto)</h2><div class='plots'>",
            *plots,
            "</div>",
            "<h2>Learning curves</h2><div class='plots'>",
            *curves,
            "</div>",
            "<h2>Overfitting signal</h2><div class='plots'>",
            overfit,
            "</div>",
            "<p id='overfit-flags'>"
            + (
                html.escape("; ".join(flagged))
                if flagged
                else "No run showed validation stalling while training accuracy kept rising."
            )
            + "</p>",
        ]
    parts += ["<h2>Setup</h2>", setup_html(runs), "</body></html>"]
    out = Path(output) if output else root / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, "".join(parts))
    md = out.with_suffix(".md")
    write_text(md, markdown(root, rows, verdict, failed, flagged))
    return out, md


def _gap_plot(runs: list[dict], methods: list[str], flags: dict[str, list[int]]) -> str:
    """Train minus validation accuracy per run, with its overfitting flags as dotted lines."""
    fig, ax = _figure()
    for i, method in enumerate(methods):
        color = COLORS[i % len(COLORS)]
        for j, r in enumerate(r for r in runs if r["method"] == method):
            pts = gap_series(r)
            ax.plot(
                [p["step"] for p in pts],
                [100 * p["gap"] for p in pts],
                marker="o",
                color=color,
                label=method if j == 0 else None,
            )
            for step in flags[r["name"]]:
                ax.axvline(step, color=color, linestyle=":", alpha=0.7)
    ax.axhline(0, color="#999", linewidth=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train − validation accuracy (pt)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _svg(fig)


def markdown_table(rows: list[dict]) -> str:
    """The comparison table in Markdown: mean ± 95% CI, best of each column in bold."""
    best = best_of(rows)
    lines = [
        "| method | runs | " + " | ".join(t for _, t, *_ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = []
        for key, _, _, _, d in COLUMNS:
            mean, half = r[key]
            text = f"{mean:,.{d}f}" + (f" ± {half:,.{d}f}" if half else "")
            cells.append(f"**{text}**" if len(rows) > 1 and math.isclose(mean, best[key]) else text)
        lines.append(f"| {r['method']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(rows: list[dict]) -> str:
    """The comparison table as CSV: mean and 95% CI half-width columns."""
    head = ["method", "runs"] + [h for k, *_ in COLUMNS for h in (k, k + "_ci95")]
    lines = [",".join(head)]
    for r in rows:
        vals = [r["method"], str(r["n"])] + [repr(x) for k, *_ in COLUMNS for x in r[k]]
        lines.append(",".join(vals))
    return "\n".join(lines) + "\n"


def markdown(
    root: Path, rows: list[dict], verdict: list[str], failed: list[dict], flagged: list[str]
) -> str:
    lines = [f"# Fine-tuning comparison: {root.name}", ""]
    if rows:
        lines += [
            markdown_table(rows),
            "",
            "Mean ± 95% CI over seeds; bold: best in column.",
            "",
            recommendation(rows),
            "",
            "## Verdicts",
            "",
        ]
        lines += [f"- {v}" for v in verdict]
    if failed:
        lines += ["", "## Failed or stopped runs", ""]
        lines += [f"- {r['name']}: {r.get('status')} — {r.get('reason', '')}" for r in failed]
    lines += ["", "## Overfitting signal", ""]
    lines += [f"- {f}" for f in flagged] or ["- none detected"]
    return "\n".join(lines) + "\n"
