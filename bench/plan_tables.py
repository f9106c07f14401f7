"""The README's Llama-2-7B plan table, computed by `tunelab plan`'s own trace from the
published config.json (tests/data/published/llama-2-7b: no weights, no tokenizer), batch 4 x
512 tokens, full and LoRA, fp32 and bf16 autocast, LoRA on a bf16 base and on a 4-bit base
(QLoRA, model.quantize=4bit). Keeps the figures in
bench/results/plan-7b-<date>.json (bench/figures.py puts the table in the docs).

    .venv/bin/python bench/plan_tables.py      # ~40 s
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from tunelab import planning as plan  # noqa: E402
from tunelab.methods import METHODS  # noqa: E402
from tunelab.models import frozen_dtype  # noqa: E402
from tunelab.planning import gib  # noqa: E402

START, END = "<!-- plan-7b:start -->", "<!-- plan-7b:end -->"
FOLDER = ROOT / "tests" / "data" / "published" / "llama-2-7b"
PARTS = ("weights", "gradients", "optimizer", "activations", "temporaries", "peak")


def main() -> None:
    config = plan.model_config(str(FOLDER), "causal-lm", 2)
    rows = []
    cases = [("full", False, "fp32"), ("full", True, "fp32"), ("lora", False, "fp32"),
             ("lora", True, "fp32"), ("lora", True, "auto"), ("lora", True, "4bit")]  # fmt: skip
    for method, bf16, base in cases:
        nf4 = base == "4bit"  # 4-bit layers multiply in the run's precision, here bf16
        frozen = frozen_dtype("auto" if nf4 else base, "bf16" if bf16 else "no", METHODS[method])
        t = plan.trace(config, "causal-lm", {"name": method}, 4, 512, bf16, False, frozen)
        t = plan.in_nf4(t, frozen) if nf4 else t
        precision = "bf16 autocast" if bf16 else "fp32"
        if nf4:
            precision += ", frozen base 4-bit NF4 (QLoRA, model.quantize=4bit)"
        elif frozen == torch.bfloat16:
            precision += ", frozen base bf16 (model.base_dtype=auto)"
        rows.append({"method": method, "precision": precision, "total": t["total"],
                     **{k: t[k] for k in PARTS}})  # fmt: skip
    day = datetime.date.today().isoformat()
    out = ROOT / "bench" / "results" / f"plan-7b-{day}.json"
    out.write_text(json.dumps({"config": str(FOLDER.relative_to(ROOT)), "batch": [4, 512],
                               "rows": rows}, indent=1) + "\n")  # fmt: skip
    print(render({"rows": rows}))
    print(f"written: {out.relative_to(ROOT)}; the docs' table: python bench/figures.py")


def render(result: dict) -> str:
    """The plan table from a plan-7b result file (bench/figures.py inserts it)."""
    head = "| method | precision | weights | gradients | AdamW | activations | temporaries | peak |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        name = "lora (q, v; r 8)" if r["method"] == "lora" else r["method"]
        cells = " | ".join(gib(r[k]) for k in PARTS)
        lines.append(f"| {name} | {r['precision']} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
