"""Exhaustive learning-rate grid against `tunelab tune` at its defaults, on the same work.

For each setup (default: 3,000 and 600 built-in training snippets), per method (the
article's four plus freeze): a grid of 6 learning rates log-spaced over the same range tune
searches (default/10 .. default*10), each run to the full per-trial budget; then `tune` at its
defaults (successive halving across methods with racing, `tune.trials` configurations per
method) with the same per-trial setup: the same steps and the same validation points on the
same validation subset. Then the best configuration of each side's winning method is trained
once more, tested, so the winners are compared on test too.

Compute is counted as the run records count it (training examples processed; seconds of
training and validation), from the run records on disk, both sides the same way.

Writes bench/results/tune-bench-<date>.json (raw: every grid point and trial) and the
generated block of bench/RESULTS.md (between its `<!-- bench:tune -->` markers);
`python bench/tune_bench.py --rewrite FILE` regenerates the block from a saved result.
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


def setup_result(
    train_examples: int, methods: list[str], grid_n: int, out: Path, reuse_grid: bool = False
) -> dict:
    from tunelab.config import for_method, load_config
    from tunelab.methods import METHODS
    from tunelab.results import load_records, read_record
    from tunelab.train import run
    from tunelab.tuning import trial_config, tune

    over = [f"data.max_train_examples={train_examples}", "tracker=none"]
    base = load_config(None, [*over, f"out_dir={out / 'tune'}"])
    # a grid run is judged at its end, as tune's trials trained to the end are: one validation
    grid_base = load_config(None, [*over, "tune.evals=1"])
    grid, t0, reused = {}, time.perf_counter(), 0
    for method in methods:
        for i, lr in enumerate(grid_lrs(METHODS[method]().lr, grid_n)):
            cfg = trial_config(grid_base, method, {"train.lr": lr}, i)
            cfg.out_dir = str(out / "grid" / method)
            rec = read_record(out / "grid" / method / str(i)) if reuse_grid else None
            if rec is None or not rec.ok or rec.lr != lr:
                rec = run(cfg, overwrite=True)
            else:
                reused += 1
            print(f"grid {method} lr={lr:.3g}: val {100 * _best(rec):.2f}", flush=True)
    grid_wall = None if reused else time.perf_counter() - t0  # reused runs: no wall time
    for method in methods:
        grid[method] = [_point(r) for r in load_records(out / "grid" / method)]
    t0 = time.perf_counter()
    summary = tune(base, methods)
    tune_wall = time.perf_counter() - t0
    trials = [r for r in load_records(out / "tune" / "trials") if r.is_trial]
    tuned = {m: [_point(r) for r in trials if r.tuning.study == m] for m in methods}
    result = {
        "train_examples": train_examples,
        "grid_points": grid_n,
        "tune": {
            "trials": base.tune.trials,
            "evals": base.tune.evals,
            "eta": base.tune.eta,
            "pruner": base.tune.pruner,
            "rungs": summary.rungs,
            "stopped": {m: t.stopped for m, t in summary.methods.items() if t.stopped},
            "reached": {m: t.rungs for m, t in summary.methods.items()},
        },
        "eval_examples": base.tune.eval_examples,
        "grid": _side(grid, grid_wall),
        "tuned": _side(tuned, tune_wall),
    }
    # each side's best configuration of its winning method, trained once more and tested
    for side in ("grid", "tuned"):
        s = result[side]
        params = s["best"][s["winner"]]["params"]
        cfg = for_method(base, s["winner"], params, name=side, out_dir=str(out / "final"))
        rec = run(cfg, overwrite=True)  # validated on the whole split, tested
        s["final"] = {"val": _best(rec), "test": rec.test.accuracy, "params": params}
    return result


def _best(rec) -> float:
    return rec.best_validation.accuracy if rec.best_validation else 0.0


def _point(rec) -> dict:
    """A grid run or a trial: "val" is its validation accuracy at the end of its steps (the
    one point both sides have for a run trained to the end), "val_best" its best point."""
    last = rec.curve[-1].get("val_accuracy", 0.0) if rec.curve else 0.0
    return {
        "lr": rec.lr,
        "status": rec.status,
        "val": last,
        "val_best": _best(rec),
        "validations": len(rec.curve),
        "examples": rec.timing.train_examples_seen,
        "seconds": rec.timing.train_s + rec.timing.eval_s,
        "params": rec.tuning.params if rec.tuning else {"train.lr": rec.lr},
    }


def _side(points: dict[str, list[dict]], wall: float | None) -> dict:
    # the best of a method: among the configurations trained to the end (a pruned trial's
    # validation came from fewer steps; on the grid every run is trained to the end)
    full = {m: [p for p in ps if p["status"] == "ok"] for m, ps in points.items()}
    best = {m: max(p, key=lambda x: x["val"]) for m, p in full.items() if p}
    winner = max(best, key=lambda m: best[m]["val"])
    return {
        "examples": sum(p["examples"] for ps in points.values() for p in ps),
        "seconds": sum(p["seconds"] for ps in points.values() for p in ps),
        "wall_s": wall,
        "runs": sum(len(p) for p in points.values()),
        "to_the_end": sum(len(p) for p in full.values()),
        "best": best,
        "winner": winner,
        "points": points,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="3000,600", help="training snippets, one per setup")
    ap.add_argument("--methods", default="full,llrd,freeze,lora,prompt")
    ap.add_argument("--grid", type=int, default=6, help="learning rates per method")
    ap.add_argument("--out", default=str(HERE / "out" / "tune"))
    ap.add_argument("--rewrite", help="regenerate RESULTS.md's block from this result file")
    ap.add_argument(
        "--reuse-grid",
        action="store_true",
        help="keep grid runs already finished in --out (same lr); the grid's wall time then "
        "counts only the runs made now",
    )
    args = ap.parse_args()
    if args.rewrite:
        result = json.loads(Path(args.rewrite).read_text())
    else:
        import torch

        from tunelab.measure import environment  # the machine, library versions, git commit

        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
            "env": environment(torch.device("cpu")),
            "setups": [],
        }
        path = HERE / "results" / f"tune-bench-{result['date'][:10]}.json"
        for n in args.setups.split(","):  # kept after each setup: a long bench keeps its part
            where = Path(args.out) / n
            setup = setup_result(int(n), args.methods.split(","), args.grid, where, args.reuse_grid)
            result["setups"].append(setup)
            path.write_text(json.dumps(result, indent=1))
            write_results(HERE / "RESULTS.md", "tune", results_md(result))
            print(f"raw results: {path}")
    write_results(HERE / "RESULTS.md", "tune", results_md(result))
    print(results_md(result))


def verdict(s: dict) -> dict:
    """The issue's targets for one setup, from its numbers."""
    g, t = s["grid"], s["tuned"]
    gap = 100 * (t["best"][t["winner"]]["val"] - g["best"][g["winner"]]["val"])
    return {
        "same_winner": g["winner"] == t["winner"],
        "gap_pt": gap,
        "within": gap >= -0.5,
        "ratio": t["examples"] / g["examples"],
    }


def results_md(r: dict) -> str:
    lines = [
        "### Tuning: exhaustive grid vs `tune` at its defaults",
        "",
        f"Measured {r['date']} on {r['env']['cpu']}, {r['env']['cpu_count']} cores, commit "
        f"{r['env']['git_commit']}. MiniLM-L6 on the built-in snippets, one epoch per run, "
        "batch 32. Grid: 6 learning rates per method over tune's range (default/10 .. "
        "default*10), every run trained to the end, the method's other knobs at their "
        "defaults, validated once at the end. Tune: `tunelab tune` at its defaults. A run is "
        "judged by its validation accuracy at the end of its steps on the same first 500 "
        "validation snippets, on both sides; a method's best is its best run trained to the "
        "end (on tune's side, trials that stopped at a rung do not count). Compute: training "
        "examples processed, from the run records; seconds: training + validation. Final: the "
        "winning method's best configuration of each side trained once more, validated on the "
        "whole validation split and scored on test. Raw: `bench/results/tune-bench-<date>.json`.",
    ]
    for s in r["setups"]:
        g, t, tc, v = s["grid"], s["tuned"], s["tune"], verdict(s)
        rungs = ", ".join(map(str, tc["rungs"])) or "-"
        lines += [
            "",
            f"#### {s['train_examples']:,} training snippets",
            "",
            f"Tune: {tc['pruner']}, {tc['trials']} configurations per method, rungs at "
            f"validations {rungs} of {tc['evals']} (eta {tc['eta']}), racing on.",
            "",
            "| method | grid best val % (lr) | tune best val % (configuration) | trials reaching "
            "each rung | stopped |",
            "|---|---|---|---|---|",
        ]
        for m in g["best"]:
            gb, tb = g["best"][m], t["best"].get(m)
            conf = ", ".join(
                f"{k.split('.')[-1]}={_n(x)}" for k, x in (tb or {}).get("params", {}).items()
            )
            tv = f"{100 * tb['val']:.2f} ({conf})" if tb else "- (no run to the end)"
            reached = " / ".join(map(str, tc["reached"].get(m, [])))
            stop = tc["stopped"].get(m, "")
            lines.append(
                f"| {m} | {100 * gb['val']:.2f} ({gb['lr']:.3g}) | {tv} | {reached} | {stop} |"
            )
        lines += [
            "",
            "| | runs (to the end) | training examples | seconds | wall s | winner | best val % "
            "| final val % | final test % |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, side in (("grid", g), ("tune", t)):
            w, f = side["best"][side["winner"]], side["final"]
            wall = "-" if side["wall_s"] is None else f"{side['wall_s']:.0f}"
            lines.append(
                f"| {name} | {side['runs']} ({side['to_the_end']}) | {side['examples']:,} | "
                f"{side['seconds']:.0f} | {wall} | {side['winner']} | "
                f"{100 * w['val']:.2f} | {100 * f['val']:.2f} | {100 * f['test']:.2f} |"
            )
        lines += [
            "",
            f"Tune spent **{v['ratio']:.2f}x** the grid's training examples "
            f"({t['seconds'] / g['seconds']:.2f}x its seconds of training and validation"
            + (f", {t['wall_s'] / g['wall_s']:.2f}x its wall time" if g["wall_s"] else "")
            + f"). Same winning method: **{'yes' if v['same_winner'] else 'no'}**; tune's best "
            f"validation is {abs(v['gap_pt']):.2f} pt {'above' if v['gap_pt'] >= 0 else 'below'} "
            f"the grid's. Targets: same winner {'met' if v['same_winner'] else 'missed'}; within "
            f"0.5 pt or better {'met' if v['within'] else 'missed'}; at most 1/3 of the grid's "
            f"examples {'met' if v['ratio'] <= 1 / 3 else 'missed'}.",
        ]
    return "\n".join(lines)


def _n(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
