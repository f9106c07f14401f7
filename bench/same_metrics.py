"""Are two comparisons' metrics bit-identical? For every run folder present in both OUT_A and
OUT_B: test and best-validation scores and the validation curve (times left out) compared
exactly, from the result.json files as written (not through tunelab's reader).

How issue 19's refactor was checked (`make demo` at 901564f and at 2f0cfd8):
    git worktree add /tmp/base 901564f
    (cd /tmp/base && PYTHONPATH=src python -m tunelab compare --config configs/demo.yaml \
        --methods full,llrd,lora,prompt --out /tmp/demo-base --overwrite --no-report)
    make demo
    python bench/same_metrics.py /tmp/demo-base runs/demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TIMES = {"train_time_s", "samples"}


def metrics(path: Path) -> dict:
    rec = json.loads(path.read_text())
    curve = [{k: v for k, v in p.items() if k not in TIMES} for p in rec.get("curve", [])]
    return {"test": rec.get("test"), "best_validation": rec.get("best_validation"),
            "steps": rec.get("steps"), "curve": curve}  # fmt: skip


def main(a: str, b: str) -> int:
    names = sorted(
        p.parent.relative_to(a).as_posix() for p in Path(a).rglob("result.json")
        if (Path(b) / p.parent.relative_to(a) / "result.json").exists()
    )  # fmt: skip
    if not names:
        print("no run folder in both")
        return 1
    differ = 0
    for name in names:
        x, y = metrics(Path(a) / name / "result.json"), metrics(Path(b) / name / "result.json")
        same = x == y
        differ += not same
        acc = (x["test"] or {}).get("accuracy")
        print(f"{name}: {'identical' if same else 'DIFFERENT'} (test accuracy {acc})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
