"""Exhaustive learning-rate grid against `tunelab tune` with pruning, on the same work.

Per method (default: the article's four plus freeze) on the built-in data: a grid of 6
learning rates log-spaced over the same range tune searches (default/10 .. default*10), each
run to the full per-trial budget; then `tune` with the same per-trial setup (same steps, the
same validation points on the same validation subset) and Hyperband pruning. Reports compute
(training examples processed and seconds, validation included) and the winner of each side.

Writes bench/out/tune/tune-bench.json and the generated block of bench/RESULTS.md
(between its `<!-- bench:tune -->` markers).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import write_results  # bench/bench.py: rewrites one generated block of RESULTS.md

HERE = Path(__file__).parent


def grid_lrs(default: float, n: int) -> list[float]:
    lo, hi = math.log(default / 10), math.log(default * 10)
    return [math.exp(lo + i * (hi - lo) / (n - 1)) for i in range(n)]


def main() -> None:
    from tunelab.config import load_config
    from tunelab.methods import METHODS
    from tunelab.results import load_records
    from tunelab.train import run
    from tunelab.tune import trial_config, tune

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-examples", type=int, default=3000)
    ap.add_argument("--methods", default="full,llrd,freeze,lora,prompt")
    ap.add_argument("--grid", type=int, default=6, help="learning rates per method")
    ap.add_argument("--trials", type=int, default=12, help="tune trials per method")
    ap.add_argument("--out", default=str(HERE / "out" / "tune"))
    args = ap.parse_args()
    out, methods = Path(args.out), args.methods.split(",")
    base = load_config(
        None,
        [
            f"data.max_train_examples={args.train_examples}",
            f"out_dir={out / 'tune'}",
            "tracker=none",
            f"tune.trials={args.trials}",
        ],
    )
    grid = {}
    t0 = time.perf_counter()
    for method in methods:
        points = []
        for i, lr in enumerate(grid_lrs(METHODS[method]().lr, args.grid)):
            cfg = trial_config(base, method, {"train.lr": lr}, i)
            cfg.out_dir = str(out / "grid" / method)
            rec = run(cfg, overwrite=True)
            points.append(_point(rec))
            print(f"grid {method} lr={lr:.3g}: val {100 * points[-1]['val']:.2f}", flush=True)
        grid[method] = points
    grid_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    tune(base, methods)
    tune_wall = time.perf_counter() - t0
    trials = [r for r in load_records(out / "tune" / "trials") if r.is_trial]
    tuned = {m: [_point(r) for r in trials if r.tuning.study == m] for m in methods}
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "train_examples": args.train_examples,
        "grid_points": args.grid,
        "trials": args.trials,
        "grid": _side(grid, grid_wall),
        "tune": _side(tuned, tune_wall),
    }
    (out / "tune-bench.json").write_text(json.dumps(result, indent=2))
    write_results(HERE / "RESULTS.md", "tune", results_md(result))
    print(results_md(result))


def rewrite() -> None:
    """Regenerate the RESULTS.md block from bench/out/tune/tune-bench.json (no rerun)."""
    result = json.loads((HERE / "out" / "tune" / "tune-bench.json").read_text())
    write_results(HERE / "RESULTS.md", "tune", results_md(result))


def _point(rec) -> dict:
    return {
        "lr": rec.lr,
        "status": rec.status,
        "val": rec.best_validation.accuracy if rec.best_validation else 0.0,
        "examples": rec.timing.train_examples_seen,
        "seconds": rec.timing.train_s + rec.timing.eval_s,
        "params": rec.tuning.params if rec.tuning else {"train.lr": rec.lr},
    }


def _side(points: dict[str, list[dict]], wall: float) -> dict:
    best = {m: max(p, key=lambda x: x["val"]) for m, p in points.items() if p}
    winner = max(best, key=lambda m: best[m]["val"])
    return {
        "examples": sum(p["examples"] for ps in points.values() for p in ps),
        "seconds": sum(p["seconds"] for ps in points.values() for p in ps),
        "wall_s": wall,
        "runs": sum(len(p) for p in points.values()),
        "pruned": sum(p["status"] == "pruned" for ps in points.values() for p in ps),
        "best": best,
        "winner": winner,
        "points": points,
    }


def results_md(r: dict) -> str:
    g, t = r["grid"], r["tune"]
    lines = [
        "### Tuning: exhaustive grid vs `tune` with pruning",
        "",
        f"Measured {r['date']}; MiniLM-L6, {r['train_examples']} built-in training snippets, one "
        "epoch per run, 4 validations per run on the first 500 validation snippets. Grid: "
        f"{r['grid_points']} learning rates per method over tune's range (default/10 .. "
        f"default*10), every run to the end. Tune: {r['trials']} trials per method (TPE, "
        "seeded; Hyperband pruning; lr plus each method's own knobs).",
        "",
        "| method | grid best val % (lr) | tune best val % (configuration) |",
        "|---|---|---|",
    ]
    for m in g["best"]:
        gb, tb = g["best"][m], t["best"].get(m)
        conf = ", ".join(
            f"{k.split('.')[-1]}={_n(v)}" for k, v in (tb or {}).get("params", {}).items()
        )
        tv = f"{100 * tb['val']:.2f} ({conf})" if tb else "-"
        lines.append(f"| {m} | {100 * gb['val']:.2f} ({gb['lr']:.3g}) | {tv} |")
    ratio_ex = t["examples"] / g["examples"]
    lines += [
        "",
        "| | runs (pruned) | training examples | seconds (train + validation) | wall s | "
        "winner | best val % |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in (("grid", g), ("tune", t)):
        w = s["best"][s["winner"]]
        lines.append(
            f"| {name} | {s['runs']} ({s['pruned']}) | {s['examples']:,} | {s['seconds']:.0f} | "
            f"{s['wall_s']:.0f} | {s['winner']} | {100 * w['val']:.2f} |"
        )
    same = g["winner"] == t["winner"]
    gap = 100 * (t["best"][t["winner"]]["val"] - g["best"][g["winner"]]["val"])
    per_run = t["examples"] / max(t["runs"], 1) / (g["examples"] / max(g["runs"], 1))
    lines += [
        "",
        f"Tune spent {ratio_ex:.2f}x the grid's training examples "
        f"({t['seconds'] / g['seconds']:.2f}x its seconds) for {t['runs']} trials against "
        f"{g['runs']} grid runs: a trial cost "
        f"{per_run:.2f} of a full run on average ({t['pruned']} of {t['runs']} pruned). Same "
        f"winning method: {'yes' if same else 'no'}; tune's best validation is "
        f"{abs(gap):.2f} pt {'above' if gap >= 0 else 'below'} the grid's. Targets: same winner "
        "(met if yes), within 0.5 pt (met if above or within), at most 1/3 of the grid's compute.",
    ]
    return "\n".join(lines)


def _n(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
