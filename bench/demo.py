"""The demo, measured: `make demo`'s comparison (configs/demo.yaml: the packaged MiniLM-L6 on
5,000 built-in Rotten Tomatoes snippets, full / llrd / lora / prompt, one epoch) run through
the Python API, its table, verdicts and recommendation kept with the machine that ran it.

    python bench/demo.py      # ~3-10 min on 2 CPU cores; writes bench/results/demo-<date>.json

The README's demo table is rendered from that file by bench/figures.py.
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

METHODS = "full,llrd,lora,prompt"


def machine() -> dict:
    """suite_times' machine (CPU model, cores, native bf16) and the GPU, if any."""
    import torch
    from suite_times import machine as cpu

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {**cpu(), "gpu": gpu}


def main() -> None:
    import tunelab

    out = ROOT / "runs" / "demo"
    t0 = time.perf_counter()
    cmp = tunelab.compare(METHODS, "configs/demo.yaml", out=str(out), overwrite=True,
                          report=False)  # fmt: skip
    wall = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    date = datetime.now(timezone.utc).isoformat(timespec="minutes")
    rec = cmp.records[0]
    result = {
        "bench": "demo",
        "date": date,
        "commit": commit,
        "machine": machine(),
        "command": f"tunelab compare --config configs/demo.yaml --methods {METHODS}",
        "precision": rec.env.precision,
        "train_examples": rec.data.train,
        "test_examples": rec.data.test,
        "wall_s": wall,
        "markdown": cmp.markdown,
        "rows": cmp.table.to_dict(orient="records"),
        "verdicts": cmp.analysis.verdicts,
        "recommendation": cmp.recommendation,
    }
    path = HERE / "results" / f"demo-{date[:10]}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(render(result))
    print(f"written: {path}")


def render(r: dict) -> str:
    """The README's demo block: the table, the verdicts and the recommendation as printed."""
    return "\n".join([r["markdown"], "", *[f"- {v}" for v in r["verdicts"]], "", "```",
                      r["recommendation"], "```"])  # fmt: skip


if __name__ == "__main__":
    main()
