"""Every method on SmolLM2 at one budget, with forgetting: the learning / forgetting table.

SmolLM2-135M-Instruct (built in) continues "Review: {text}\\nSentiment:" with a label word
(classification as text) on the built-in reviews: 320 training snippets, one epoch at batch 16,
200 validation and 200 test snippets; every method the model takes, at its own default
learning rate; forgetting on 200 passages of the built-in general text (tunelab.forgetting).
Writes bench/results/forgetting-<date>.json (machine named); docs/decoders.md renders it.

    python bench/forgetting_table.py        # ~30-60 min on 2 CPU cores
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

SETUP = ["data.max_train_examples=320", "data.max_eval_examples=200", "train.epochs=1",
         "train.batch_size=16", "forgetting.examples=200"]  # fmt: skip


def methods() -> str:
    """Every method the model takes (the others are refused up front, with the reason)."""
    from tunelab.config import for_method, load_config
    from tunelab.errors import TunelabError
    from tunelab.methods import METHODS
    from tunelab.planning.trace import refuse_early

    base, ok = load_config(str(ROOT / "configs" / "decoder-demo.yaml"), SETUP), []
    for m in METHODS:
        try:
            refuse_early(for_method(base, m, {}))
            ok.append(m)
        except TunelabError as e:
            print(f"{m}: refused: {e}")
    return ",".join(ok)


def main() -> None:
    from demo import machine

    import tunelab

    out = ROOT / "runs" / "forgetting"
    t0 = time.perf_counter()
    names = methods()
    cmp = tunelab.compare(names, *SETUP, config="configs/decoder-demo.yaml", out=str(out),
                          overwrite=True, report=True)  # fmt: skip
    wall = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    rows = []
    for r in cmp.records:
        f = r.forgetting
        rows.append({
            "method": r.method, "status": r.status, "reason": r.reason[:200],
            "trainable": r.params.trainable if r.ok else None,
            "test_accuracy": r.test.accuracy if r.ok and r.test else None,
            "test_examples": r.data.test,
            "forgetting": f.change if f else None, "low": f.low if f else None,
            "high": f.high if f else None, "before": f.before if f else None,
            "passages": f.passages if f else 0, "train_s": r.timing.train_s if r.ok else None,
        })  # fmt: skip
    result = {
        "bench": "forgetting", "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "commit": commit, "machine": machine(), "precision": cmp.records[0].env.precision,
        "command": f"tunelab compare --config configs/decoder-demo.yaml --methods {names} "
        + " ".join(SETUP), "wall_s": wall, "rows": rows, "verdicts": cmp.analysis.verdicts,
        "failed": [f"{r.method}: {r.reason[:200]}" for r in cmp.failed],
    }  # fmt: skip
    path = HERE / "results" / f"forgetting-{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(rows, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
