"""Tuning against forgetting on SmolLM2: each method's Pareto front of validation accuracy and
forgetting, from a real two-objective tune (tunelab.tradeoff).

SmolLM2-135M-Instruct continues "Review: {text}\\nSentiment:" with a label word on the built-in
reviews (320 training snippets, one epoch at batch 16, 100 validation snippets for the trials);
each method's learning rate (and LoRA's rank) searched over 6 trials, every trial to the end
(tune.pruner=none); forgetting on 100 passages of the built-in general text. The result file
keeps every trial's validation accuracy and forgetting beside tunelab's front, so the front
can be checked by hand; this script checks it too (``on_front`` below is written apart from
tunelab.tradeoff). Writes bench/results/forgetting-tune-<date>.json (machine named);
docs/tuning.md renders it.

    python bench/forgetting_tune.py        # ~25 min on 2 CPU cores
    python bench/forgetting_tune.py --from-runs   # the result file again from runs/ (no tune)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

METHODS = "full,lora"
SETUP = ["data.max_train_examples=320", "data.max_eval_examples=100", "train.epochs=1",
         "train.batch_size=16", "tune.trials=6", "tune.pruner=none", "tune.evals=2",
         "tune.eval_examples=100", "forgetting.examples=100", "forgetting.objective=true",
         "tune.space={full: {lr: [1.0e-6, 1.0e-3]}, "
         "lora: {lr: [1.0e-5, 1.0e-2], r: [4, 8, 16]}}"]  # fmt: skip


def on_front(trials: list[dict]) -> set[int]:
    """Trials no other trial beats on both (accuracy up, forgetting down), by hand."""
    return {
        t["trial"] for t in trials
        if not any(u["val"] >= t["val"] and u["forgetting"] <= t["forgetting"]
                   and (u["val"] > t["val"] or u["forgetting"] < t["forgetting"]) for u in trials)
    }  # fmt: skip


def main() -> None:
    from demo import machine

    import tunelab
    from tunelab.results import TuningSummary, load_records

    out, old = ROOT / "runs" / "forgetting-tune", None
    t0 = time.perf_counter()
    if "--from-runs" in sys.argv:  # a finished tune's records: its wall time, date and commit
        old = json.loads(sorted((HERE / "results").glob("forgetting-tune-*.json"))[-1].read_text())
        summary = TuningSummary.read(out)
    else:
        summary = tunelab.tune(METHODS, *SETUP, config="configs/decoder-demo.yaml",
                               out=str(out), overwrite=True)  # fmt: skip
    wall = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    methods, zero_shot = {}, None
    for r in load_records(out / "trials"):  # the untrained model on the same subset
        zero_shot = zero_shot or r.data.zero_shot.get("validation")
    for method, m in summary.methods.items():
        recs = [r for r in load_records(out / "trials" / method) if r.ok]
        trials = [{"trial": r.tuning.trial, "params": r.tuning.params,
                   "val": r.best_validation.accuracy, "val_examples": r.data.validation,
                   "forgetting": r.forgetting.change, "low": r.forgetting.low,
                   "high": r.forgetting.high, "train_s": r.timing.train_s}
                  for r in sorted(recs, key=lambda r: r.tuning.trial)]  # fmt: skip
        front = sorted(p["trial"] for p in m.front)
        if front != sorted(on_front(trials)):
            raise SystemExit(f"{method}: tunelab's front {front} != by hand {on_front(trials)}")
        methods[method] = {"trials": trials, "front": front, "best_trial": m.best_trial}
    result = {
        "bench": "forgetting-tune",
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "commit": commit, "machine": machine(),
        "command": f"tunelab tune --config configs/decoder-demo.yaml --methods {METHODS} "
        + " ".join(f"'{s}'" if " " in s else s for s in SETUP), "wall_s": wall,
        "methods": methods,
        "zero_shot_val": zero_shot.accuracy if zero_shot else None,
    }  # fmt: skip
    if old:
        result.update({k: old[k] for k in ("date", "commit", "machine", "wall_s")})
    path = HERE / "results" / f"forgetting-tune-{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(render(result))
    print(f"written: {path}")


def render(r: dict) -> str:
    """The docs' table: every trial, its validation accuracy (95% Wilson interval over the
    validation subset), forgetting (95% interval over the passages), on the front or not."""
    from tunelab.report.stats import binomial

    z = r.get("zero_shot_val")
    zero = f"; the untrained model's zero-shot validation accuracy: {100 * z:.1f}%" if z else ""
    lines = [
        f"{r['command']} ({r['wall_s'] / 60:.0f} min{zero}):", "",
        "| method | trial | parameters | validation accuracy % | forgetting (nats/token) | "
        "Pareto front |", "|---|---:|---|---:|---:|---|",
    ]  # fmt: skip
    for method, m in r["methods"].items():
        hand = on_front(m["trials"])
        for t in sorted(m["trials"], key=lambda t: t["forgetting"]):
            acc = binomial(100 * t["val"], t["val_examples"])
            params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in t["params"].items())
            mark = "yes" if t["trial"] in hand else ""
            mark += " (best)" if t["trial"] == m["best_trial"] else ""
            lines.append(
                f"| {method} | {t['trial']} | {params} | {acc.mean:.1f} [{acc.low:.1f}, "
                f"{acc.high:.1f}] | {t['forgetting']:+.4f} [{t['low']:+.4f}, {t['high']:+.4f}]"
                f" | {mark} |"
            )
    return "\n".join(lines)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
