"""LoRA on the built-in SmolLM2-135M with its frozen base stored in bf16 against fp32 (the
only storage before issue 21), both computing in bf16 autocast (train.mixed_precision=bf16),
on the decoder demo's task: measured peak memory, examples per second, validation accuracy,
and the plan's predicted peak for each.

    python bench/base_dtype_bench.py                       # 96 training snippets
    python bench/base_dtype_bench.py --examples 800        # the decoder demo's size

Each side is a fresh `tunelab run` process (`python -m tunelab run --config
configs/decoder-demo.yaml method=lora train.mixed_precision=bf16 model.base_dtype=...`), one
after the other; numbers come from the run records (result.json). On a CPU without native
bf16 (this project's AMD EPYC) autocast emulates bf16 and is slow: the speed column says
nothing about a bf16 CPU or a GPU, the memory column does. Writes
bench/results/base-dtype-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

EVAL = 48  # validation/test snippets: emulated bf16 label-word scoring is slow; the memory
# compared is the training steps' (the accuracies are a smoke check, not a comparison)
HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))


def side(base: str, examples: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "tunelab", "run", "--config", "configs/decoder-demo.yaml",
           "method=lora", "train.mixed_precision=bf16", f"model.base_dtype={base}",
           f"data.max_train_examples={examples}", f"data.max_eval_examples={EVAL}",
           "tracker=none", "--out", str(out),
           "--overwrite"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{base}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    from tunelab.results import load_records

    (rec,) = load_records(out)
    return {
        "base_dtype": base,
        "weights": rec.env.weights,
        "precision": rec.env.precision,
        "peak_mb": round(rec.memory.peak_bytes / 2**20, 1),
        "process_peak_mb": round(rec.memory.process_peak_bytes / 2**20, 1),
        "memory_kind": rec.memory.kind,
        "examples_per_s": round(rec.timing.examples_per_s, 3),
        "train_s": round(rec.timing.train_s, 1),
        "val_acc": round(100 * rec.best_validation.accuracy, 2),
        "test_acc": round(100 * rec.test.accuracy, 2),
        "n_val": rec.data.validation,
    }


def planned(base: str, examples: int) -> int:
    from tunelab.config import load_config
    from tunelab.planning import plan

    cfg = load_config(
        str(ROOT / "configs" / "decoder-demo.yaml"),
        ["method=lora", "train.mixed_precision=bf16", f"model.base_dtype={base}",
         f"data.max_train_examples={examples}", f"data.max_eval_examples={EVAL}"],
    )  # fmt: skip
    (cost,) = plan(cfg, ["lora"], device="cpu").estimates
    return cost.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--work", default="/tmp/base-dtype-bench")
    ap.add_argument("--only", choices=["fp32", "bf16", "none"], help="rerun one side (none: "
                    "neither); the rest is read back from the same day's JSON")  # fmt: skip
    args = ap.parse_args()
    date = datetime.now(timezone.utc).isoformat(timespec="minutes")
    path = HERE / "results" / f"base-dtype-{date[:10]}-{args.examples}.json"
    sides = json.loads(path.read_text())["sides"] if args.only and path.exists() else {}
    for base in [args.only] if args.only else ["fp32", "bf16"]:
        if base != "none":
            sides[base] = side(base, args.examples, Path(args.work) / base)
    for base in sides:  # the plan of this checkout for both sides, measured now or read back
        sides[base]["plan_peak_mb"] = round(planned(base, args.examples) / 2**20, 1)
        print(base, sides[base], flush=True)
    result = {
        "date": date,
        "cores": os.cpu_count(),
        "examples": args.examples,
        "sides": sides,
        "peak_ratio": round(sides["bf16"]["peak_mb"] / sides["fp32"]["peak_mb"], 3),
        "plan_peak_ratio": round(sides["bf16"]["plan_peak_mb"] / sides["fp32"]["plan_peak_mb"], 3),
    }
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("peak_ratio", "plan_peak_ratio")}))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
