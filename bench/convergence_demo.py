"""Does the report say when a comparison is budget-limited? Real multi-class data, as a user
brings it: `tunelab compare` of full fine-tuning, LoRA and prompt tuning on the packaged
MiniLM, once at the default budget (one epoch) and once with `train.until=converged`.

Data (real text, from packages tunelab already installs, never seen by its tests):
- debates: the 2016 US presidential and vice-presidential debates (scattertext), each
  statement of five words or more labelled by the speaker's party (Republican / Democratic /
  Moderator): 883 statements, up to 540 words; 256 tokens;
- rt3: Rotten Tomatoes snippets in three classes (fresh / rotten / plot synopsis), 1,200
  training rows.

    .venv/bin/python bench/convergence_demo.py          # ~40 min on 2 cores

Writes bench/results/convergence-<date>.json: per data set and budget, each method's
diagnosis (state and why), its curve's length, steps, best step, validation and test
accuracy, and the recommendation as printed.
"""

from __future__ import annotations

import bz2
import csv
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tunelab import measure  # noqa: E402
from tunelab.assets import package_dir  # noqa: E402
from tunelab.comparison import Request, compare, summarize  # noqa: E402
from tunelab.config import load_config  # noqa: E402
from tunelab.report.convergence import diagnose  # noqa: E402
from tunelab.results import load_records  # noqa: E402

METHODS = ["full", "lora", "prompt"]


def debates(folder: Path) -> tuple[Path, list[str]]:
    d = pd.read_csv(package_dir("scattertext") / "data" / "presidential_debates_2016.csv.gz")
    d = d[d.statement.str.split().str.len() >= 5][["statement", "party"]]
    d = d.rename(columns={"statement": "text", "party": "label"}).drop_duplicates("text")
    path = folder / "debates.csv"
    d.to_csv(path, index=False)
    return path, ["data.max_length=256"]


def rt3(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "rt3.csv"
    src = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(src, "rt", encoding="utf-8") as f:
        rows = {r["text"]: r["category"] for r in csv.DictReader(f)}  # duplicates once
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows.items())
    return path, ["data.max_train_examples=1200", "data.max_eval_examples=600"]


BUDGETS = {
    "one epoch (default)": [],
    "until converged": ["train.until=converged", "train.epochs=6"],
}


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="convergence-"))
    out = []
    for name, make in (("debates", debates), ("rt3", rt3)):
        path, extra = make(tmp)
        for budget, more in BUDGETS.items():
            root = tmp / f"{name}-{budget.split()[0]}"
            over = [f"data.dataset={path}", f"out_dir={root}", "tracker=none", *extra, *more]
            cfg = load_config(overrides=over)
            compare(Request(cfg, METHODS, 1, None, None, True, False))
            _, a = summarize(root)
            recs = load_records(root)  # with their metrics rows, as the report reads them
            runs = []
            for r in recs:
                d = diagnose(r)
                runs.append({
                    "method": r.method, "state": d.state, "why": d.why, "steps": r.steps,
                    "epochs": r.epochs, "stopped_early": r.stopped_early,
                    "best_step": r.best_step, "trend_points": len(r.trend),
                    "validations": len(r.curve), "train_s": r.timing.train_s,
                    "val_accuracy": r.best_validation.accuracy, "test_accuracy": r.test.accuracy,
                })  # fmt: skip
            out.append({"data": name, "budget": budget, "overrides": over[2:],
                        "recommendation": a.recommendation, "runs": runs})  # fmt: skip
            print(f"\n== {name}, {budget}\n{a.recommendation}", flush=True)
            for x in runs:
                print(f"  {x['method']}: {x['state']}: {x['why']}")
    result = {
        "bench": "convergence",
        "date": datetime.date.today().isoformat(),
        "commit": measure.git_commit(),
        "machine": {
            "cpu": measure.cpu_model(),
            "cores": os.cpu_count(),
            **measure.environment(measure.torch.device("cpu")),
        },  # fmt: skip
        "cases": out,
    }
    dest = ROOT / "bench" / "results" / f"convergence-{result['date']}.json"
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
