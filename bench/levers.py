"""A speed lever against tunelab at its defaults, on the same work: `tunelab run` processes
alternating (baseline, lever, lever, baseline, ...) so machine drift cancels.

    python bench/levers.py                                   # torch.compile, both ways
    python bench/levers.py --lever fastcpu-off=train.fast_cpu=false --methods full
    (rows of other levers measured the same day are kept in the day's file)

A lever is NAME=OVERRIDE[+OVERRIDE...] (tunelab's own overrides). Per run, from its record and
its metrics.jsonl: the steady training rate (examples/s over the log windows after the first,
so a compile or any first-step cost is out of it), the first window's extra seconds over that
rate (the one-time cost: compilation), the run's whole training time (steps, the one-time
cost included), the process's wall time, and test accuracy. The lever's compile cost is its
first-window extra minus the baseline's (which has a warm-up too). Break-even: the training
examples after which the lever's steady gain has paid for its one-time cost.

Writes bench/results/levers-<date>.json and the `<!-- bench:levers -->` block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tunelab.results import read_record

HERE = Path(__file__).parent
ROOT = HERE.parent
LEVERS = ["compile-model=train.compile=model", "compile-blocks=train.compile=blocks"]


def run(method: str, n: int, overrides: list[str], out: Path) -> dict:
    """One tunelab run in a fresh process; its rates, from the files it wrote."""
    cmd = [sys.executable, "-m", "tunelab", "run", f"method={method}",
           f"data.max_train_examples={n}", f"out_dir={out}", "tracker=none",
           "train.save_model=false", "train.log_every=5", *overrides, "--overwrite"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    run_dir = out / f"{method}-seed0"
    record = read_record(run_dir)
    windows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    windows = [w for w in windows if "examples_per_s" in w]
    ends = [w["train_time_s"] for w in windows]  # training clock at each window's end
    seconds = [b - a for a, b in zip([0.0, *ends], ends, strict=False)]
    examples = [w["examples_per_s"] * s for w, s in zip(windows, seconds, strict=True)]
    steady = sum(examples[1:]) / sum(seconds[1:])
    return {
        "steady_examples_per_s": steady,
        "first_window_extra_s": seconds[0] - examples[0] / steady,
        "train_s": record.timing.train_s,
        "examples_per_s": record.timing.examples_per_s,
        "wall_s": wall,
        "test_accuracy": record.test.accuracy,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lever", action="append", help="NAME=OVERRIDE[+OVERRIDE...]")
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--train-examples", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    levers = dict(spec.split("=", 1) for spec in (args.lever or LEVERS))
    out = HERE / "out" / "levers"
    rows = []
    for method in args.methods.split(","):
        for name, spec in levers.items():
            sides = {"baseline": [], name: []}
            for r in range(args.rounds):
                order = ["baseline", name] if r % 2 == 0 else [name, "baseline"]
                for side in order:
                    over = [] if side == "baseline" else spec.split("+")
                    sides[side].append(run(method, args.train_examples, over, out / side))
            rows.append(summarise(method, name, spec, sides))
            print(line(rows[-1]), flush=True)
    from bench import machine, write_results  # noqa: PLC0415 (bench/bench.py, next to this)

    date = datetime.now(timezone.utc)
    result = {
        "date": date.isoformat(timespec="minutes"),
        "machine": machine(),
        "train_examples": args.train_examples,
        "rounds": args.rounds,
        "rows": rows,
    }
    path = HERE / "results" / f"levers-{date:%Y-%m-%d}.json"
    if path.exists():  # the day's other levers stay (a rerun of one replaces its rows)
        mine = {(x["method"], x["lever"]) for x in rows}
        old = json.loads(path.read_text())["rows"]
        result["rows"] = [x for x in old if (x["method"], x["lever"]) not in mine] + rows
    path.write_text(json.dumps(result, indent=2))
    write_results(HERE / "RESULTS.md", "levers", block(result, path))
    print(f"wrote {path}")


def summarise(method: str, name: str, spec: str, sides: dict[str, list[dict]]) -> dict:
    def mean(side: str, key: str) -> float:
        return sum(r[key] for r in sides[side]) / len(sides[side])

    base, lever = "baseline", name
    steady = mean(lever, "steady_examples_per_s") / mean(base, "steady_examples_per_s")
    extra = mean(lever, "first_window_extra_s") - mean(base, "first_window_extra_s")
    gain_per_example = 1 / mean(base, "steady_examples_per_s") - 1 / mean(
        lever, "steady_examples_per_s"
    )
    return {
        "method": method,
        "lever": name,
        "overrides": spec,
        "steady_speedup": steady,
        "one_time_s": extra,
        "break_even_examples": extra / gain_per_example if gain_per_example > 0 else math.inf,
        "run_speedup": mean(base, "train_s") / mean(lever, "train_s"),
        "wall_speedup": mean(base, "wall_s") / mean(lever, "wall_s"),
        "accuracy": [mean(base, "test_accuracy"), mean(lever, "test_accuracy")],
        "runs": sides,
    }


def line(r: dict) -> str:
    be = r["break_even_examples"]
    return (
        f"{r['method']:6s} {r['lever']:16s} steady x{r['steady_speedup']:.2f}  one-time "
        f"{r['one_time_s']:.0f} s  break-even {'never' if math.isinf(be) else f'{be:,.0f} ex'}"
        f"  whole run x{r['run_speedup']:.2f}  wall x{r['wall_speedup']:.2f}  test acc "
        f"{100 * r['accuracy'][0]:.2f} -> {100 * r['accuracy'][1]:.2f}"
    )


def block(r: dict, path: Path) -> str:
    lines = [
        "### Levers against tunelab at its defaults (`bench/levers.py`)",
        "",
        f"Measured {r['date']} on {r['machine']}. MiniLM-L6, {r['train_examples']} built-in "
        f"training snippets, batch 32, one epoch, {r['rounds']} alternating rounds per side; "
        f"raw: `{path.relative_to(ROOT)}`. Steady: examples/s after the first log window (5 "
        "steps); one-time: the first window's extra seconds over the steady rate, minus the "
        "baseline's; whole run: training time with the one-time cost in it.",
        "",
        "| method | lever | steady speedup | one-time cost | break-even | whole run | wall | "
        "test acc (baseline -> lever) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        be = x["break_even_examples"]
        lines.append(
            f"| {x['method']} | `{x['overrides']}` | {x['steady_speedup']:.2f}x | "
            f"{x['one_time_s']:.0f} s | {'never' if math.isinf(be) else f'{be:,.0f} examples'} "
            f"| {x['run_speedup']:.2f}x | {x['wall_speedup']:.2f}x | "
            f"{100 * x['accuracy'][0]:.2f} -> {100 * x['accuracy'][1]:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
