"""Time the tuned demo comparison before and after successive halving, on one machine, one
after the other (nothing else should run meanwhile), and compare their verdicts.

    python bench/tune_demo_time.py                    # before (e6f8a9b), then after (HEAD)
    python bench/tune_demo_time.py --sides after      # one side; the other is read back from
                                                      # the JSON of the same day if it is there

Each side is the README's command of its own commit, run from a git worktree of that commit
with this checkout's virtualenv (`python -m tunelab`, PYTHONPATH set to the worktree's src):

    before: tunelab compare --config configs/tune-demo.yaml --tune 12 \
                --methods full,lora,prompt --seeds 3
    after:  tunelab compare --config configs/tune-demo.yaml --tune \
                --methods full,lora,prompt --seeds 3

Both output folders are then read by *this* checkout's analysis (the same code judges both):
each method's final validation and test accuracy (mean and 95% interval over the 3 seeds) and
which methods are within noise of the best on validation (`report.stats.same`, the rule the
report's verdicts use). The JSON (bench/results/tune-demo-time-<date>.json) keeps the wall
seconds, the training examples of trials and final runs, and those sets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from tunelab.report.stats import same  # noqa: E402
from tunelab.report.summary import analyse  # noqa: E402
from tunelab.results import TuningSummary, load_records  # noqa: E402

BEFORE = "e6f8a9b"  # main before issue 20: TPE + Hyperband, 12 trials per method
COMMON = ["compare", "--config", "configs/tune-demo.yaml", "--methods", "full,lora,prompt"]
TUNE = {"before": ["--tune", "12"], "after": ["--tune"]}


def worktree(commit: str, path: Path) -> Path:
    if not path.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, check=True
        )
    return path


def run_side(side: str, tree: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "tunelab", *COMMON, *TUNE[side], "--seeds", "3"]
    cmd += ["--out", str(out), "--overwrite"]
    env = dict(
        os.environ, PYTHONPATH=str(tree / "src"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"
    )
    log = out.parent / f"{out.name}.log"
    print(f"{side}: {' '.join(cmd[1:])} (log {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=tree, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    print(f"{side}: exit {proc.returncode}, {wall / 60:.1f} min", flush=True)
    if proc.returncode:
        print(log.read_text()[-3000:])
        raise SystemExit(f"{side} failed")
    return {"side": side, "wall_s": round(wall, 1), "command": " ".join(cmd[3:]), **judge(out)}


def judge(out: Path) -> dict:
    """What the side's records say, read by this checkout's analysis."""
    records = load_records(out)
    trials = [r for r in records if r.is_trial]
    finals = [r for r in records if not r.is_trial]
    a = analyse(records, TuningSummary.read(out))
    rows = [r for r in a.rows if "val_acc" in r.values]
    top = max(rows, key=lambda r: r["val_acc"].mean)
    return {
        "trials": len(trials),
        "trial_examples": sum(r.timing.train_examples_seen for r in trials),
        "final_runs": len(finals),
        "final_examples": sum(r.timing.train_examples_seen for r in finals),
        "methods": {
            r.method: {
                "val_acc": round(r["val_acc"].mean, 2),
                "val_half": round(r["val_acc"].half, 2),
                "test_acc": round(r["test_acc"].mean, 2),
                "test_half": round(r["test_acc"].half, 2),
                "learned": bool(r.learned),
            }
            for r in rows
        },
        "best": top.method,
        "within_noise_of_best": sorted(
            r.method for r in rows if same(r["val_acc"], top["val_acc"])
        ),
        "verdicts": a.verdicts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", default="before,after")
    ap.add_argument("--work", default="/tmp/tune-demo-time", help="worktrees and output folders")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    date = datetime.now(timezone.utc).isoformat(timespec="minutes")
    path = HERE / "results" / f"tune-demo-time-{date[:10]}.json"
    result = json.loads(path.read_text()) if path.exists() else {"sides": {}}
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    commits = {"before": BEFORE, "after": head.stdout.strip()}
    for side in args.sides.split(","):
        tree = worktree(commits[side], work / f"tree-{side}")
        result["sides"][side] = {
            "commit": commits[side],
            **run_side(side, tree, work / f"out-{side}"),
        }
        result.update(date=date, cores=os.cpu_count())
        path.write_text(json.dumps(result, indent=1) + "\n")
    s = result["sides"]
    if {"before", "after"} <= s.keys():
        result["ratio_wall"] = round(s["after"]["wall_s"] / s["before"]["wall_s"], 3)
        result["same_verdict"] = (
            s["after"]["within_noise_of_best"] == s["before"]["within_noise_of_best"]
        )
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"after/before wall: {result['ratio_wall']}; same verdict: {result['same_verdict']}")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
