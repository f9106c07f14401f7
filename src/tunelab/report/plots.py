"""matplotlib figures of the comparison, as inline SVG strings (no scripts, opens offline)."""

from __future__ import annotations

import io
import statistics

from tunelab.report.analysis import (
    Row,
    best_so_far,
    eval_points,
    gap_series,
    pareto_front,
    train_points,
)
from tunelab.results import RunRecord

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


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


def _finish(fig, ax, xlabel: str, ylabel: str) -> str:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    return _svg(fig)


def pareto_plot(rows: list[Row], cost: str, xlabel: str, metric: str, log: bool) -> str:
    """Accuracy against one cost per method (error bars: 95% interval), with the Pareto front
    of the methods that learned."""
    fig, ax = _figure()
    for i, r in enumerate(rows):
        x, y = r[cost].mean, r[metric]
        c = r[cost]
        ax.errorbar(
            x,
            y.mean,
            yerr=[[y.mean - y.low], [y.high - y.mean]] if y.half else None,
            xerr=[[c.mean - c.low], [c.high - c.mean]] if c.half else None,
            fmt="o" if r.learned else "x",
            color=COLORS[i % len(COLORS)],
            capsize=3,
            label=r.method,
        )
        ax.annotate(r.method, (x, y.mean), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = pareto_front([(r[cost].mean, r[metric].mean) for r in rows if r.learned])
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
    ylabel = "test accuracy %" if metric == "test_acc" else "validation accuracy %"
    return _finish(fig, ax, xlabel, ylabel)


def curve_plot(
    runs: list[RunRecord], methods: list[str], x: str, y: str, ylabel: str, train: bool = False
) -> str:
    """One line per method (mean over seeds), seeds as a min-max band."""
    fig, ax = _figure()
    for i, method in enumerate(methods):
        series = [
            (train_points(r) if train else eval_points(r)) for r in runs if r.method == method
        ]
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
    xlabel = {"step": "optimizer step", "train_time_s": "training seconds"}[x]
    return _finish(fig, ax, xlabel, ylabel)


def gap_plot(runs: list[RunRecord], methods: list[str], flags: dict[str, list[int]]) -> str:
    """Train minus validation accuracy per run, with its overfitting flags as dotted lines."""
    fig, ax = _figure()
    for i, method in enumerate(methods):
        color = COLORS[i % len(COLORS)]
        for j, r in enumerate(r for r in runs if r.method == method):
            pts = gap_series(r)
            ax.plot(
                [p["step"] for p in pts],
                [100 * p["gap"] for p in pts],
                marker="o",
                color=color,
                label=method if j == 0 else None,
            )
            for step in flags.get(r.name, []):
                ax.axvline(step, color=color, linestyle=":", alpha=0.7)
    ax.axhline(0, color="#999", linewidth=0.8)
    return _finish(fig, ax, "optimizer step", "train − validation accuracy (pt)")


def lr_plot(points: dict[str, list[dict]]) -> str:
    """Validation accuracy against learning rate per tuning trial; pruned trials hollow."""
    fig, ax = _figure()
    for i, (method, pts) in enumerate(points.items()):
        color = COLORS[i % len(COLORS)]
        for status, face in (("ok", color), ("pruned", "none")):
            sel = [p for p in pts if p["status"] == status and p["val"] is not None]
            label = method if status == "ok" else None
            ax.scatter(
                [p["lr"] for p in sel],
                [p["val"] for p in sel],
                facecolors=face,
                edgecolors=color,
                label=label,
            )
    ax.set_xscale("log")
    return _finish(fig, ax, "learning rate (log)", "validation accuracy % (tuning subset)")


def progress_plot(points: dict[str, list[dict]]) -> str:
    """Best validation accuracy so far against the training examples spent on trials."""
    fig, ax = _figure()
    for i, (method, pts) in enumerate(points.items()):
        series = best_so_far(pts)
        ax.step(
            [x for x, _ in series],
            [y for _, y in series],
            where="post",
            marker=".",
            color=COLORS[i % len(COLORS)],
            label=method,
        )
    return _finish(fig, ax, "training examples spent on trials", "best validation accuracy %")


def front_plot(points: dict[str, list[dict]], fronts: dict[str, list[int]], ylabel: str) -> str:
    """Validation value against forgetting per finished trial; each method's Pareto front
    (``fronts``: its trial numbers) joined by a line."""
    fig, ax = _figure()
    for i, (method, pts) in enumerate(points.items()):
        color = COLORS[i % len(COLORS)]
        sel = [p for p in pts if p["forgetting"] is not None and p["value"] is not None]
        ax.scatter([p["forgetting"] for p in sel], [p["value"] for p in sel], facecolors="none",
                   edgecolors=color)  # fmt: skip
        on = sorted((p for p in sel if p["trial"] in fronts.get(method, [])),
                    key=lambda p: p["forgetting"])  # fmt: skip
        ax.plot([p["forgetting"] for p in on], [p["value"] for p in on], marker="o",
                color=color, label=method)  # fmt: skip
    return _finish(fig, ax, "forgetting: change of the general-text loss (nats/token)", ylabel)


def size_plot(points: dict) -> str:
    """Test accuracy against training examples per method (log x); the band is the 95%
    interval (seeds, or the test split's binomial interval for one seed)."""
    fig, ax = _figure()
    for i, (method, pts) in enumerate(points.items()):
        color = COLORS[i % len(COLORS)]
        xs = [p.size for p in pts]
        ys = [p.test.mean for p in pts]
        ax.plot(xs, ys, marker="o", color=color, label=method)
        ax.fill_between(
            xs,
            [p.test.low for p in pts],
            [p.test.high for p in pts],
            color=color,
            alpha=0.15,
        )
    ax.set_xscale("log")
    return _finish(fig, ax, "training examples (log)", "test accuracy %")
