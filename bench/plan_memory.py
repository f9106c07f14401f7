"""Is `tunelab plan`'s peak memory right? Checked against a measure it does not use.

The plan's peak (weights + gradients + AdamW state + traced activations) against the
high-water mark of live tensor bytes during one real training step (forward, backward, fused
AdamW step, after a warm-up step so the optimizer state exists), read from torch.profiler's
allocation and free events (`profile_memory=True`): every tensor the step allocates,
temporaries of backward, the logits and the loss included. Plain transformers + peft through
tunelab's method modules, random weights from each config, the plan's own batch shape
(`plan.training_batch`). CPU, fp32 and bf16 autocast, full and LoRA, two batch shapes, three
architectures (MiniLM / BERT classification, DistilBERT-base classification, SmolLM2-135M /
Llama as a causal LM).

    .venv/bin/python bench/plan_memory.py                # every case (~15 min on 2 cores)
    .venv/bin/python bench/plan_memory.py smollm2-135m   # one model's cases again

Writes bench/results/plan-memory-<date>.json (every case: both figures, their parts, ratio)
and prints the table. Target (issue 17): plan / measured within 15% in every case.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tunelab import measure  # noqa: E402
from tunelab import planning as plan  # noqa: E402
from tunelab.methods import build_method  # noqa: E402
from tunelab.optim import make_optimizer  # noqa: E402

# (name, model config source, task, shapes [(batch, tokens)])
CASES = [
    ("minilm", "minilm", "classification", [(8, 64), (32, 78)]),
    ("distilbert-base", "distilbert", "classification", [(8, 64), (16, 128)]),
    ("smollm2-135m", "smollm2", "causal-lm", [(4, 64), (8, 86)]),
]


def config_of(source: str, task: str):
    if source == "distilbert":  # DistilBertConfig's defaults are distilbert-base-uncased
        from transformers import DistilBertConfig

        config = DistilBertConfig()
        config.num_labels, config.problem_type = 2, "single_label_classification"
        return config
    return plan.model_config(source, task, 2)


def live_bytes(model, opt) -> int:
    """Bytes of every tensor alive between steps: parameters, buffers, AdamW state (each
    storage once; gradients were set to None by the previous step)."""
    seen, total = set(), 0
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def measured_peak(config, task: str, method: str, batch: int, length: int, bf16: bool) -> int:
    """Live bytes between steps + the profiler's running maximum over one training step."""

    torch.manual_seed(0)
    model = build_method({"name": method}).prepare(plan.build(config, task))
    opt = make_optimizer(build_method({"name": method}).param_groups(model, 1e-5, 0.0), 1e-5)
    data = plan.training_batch(config, task, batch, length)
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**data).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # AdamW state allocated
    base = live_bytes(model, opt)
    return base + measure.allocation_peak(step)


def main() -> None:
    """Every case, or those of the models named on the command line; the results file is
    rewritten after each case, so an interrupted run keeps what it measured."""
    only = set(sys.argv[1:])
    out = ROOT / "bench" / "results" / f"plan-memory-{datetime.date.today().isoformat()}.json"
    rows = json.loads(out.read_text())["cases"] if out.exists() and only else []
    rows = [r for r in rows if r["model"] not in only]
    for name, source, task, shapes in CASES:
        if only and name not in only:
            continue
        config = config_of(source, task)
        for batch, length in shapes:
            for method in ("full", "lora"):
                for bf16 in (False, True):
                    t = plan.trace(config, task, {"name": method}, batch, length, bf16, False)
                    planned = t["peak"]
                    measured = measured_peak(config, task, method, batch, length, bf16)
                    row = {
                        "model": name, "task": task, "method": method,
                        "precision": "bf16" if bf16 else "fp32", "batch": batch,
                        "tokens": length, "planned": planned, "measured": measured,
                        "ratio": planned / measured,
                        "parts": {k: t[k] for k in ("weights", "gradients", "optimizer",
                                                    "activations", "temporaries")},
                    }  # fmt: skip
                    rows.append(row)
                    save(rows, out)
                    print(
                        f"{name:16} {method:5} {row['precision']:5} {batch:3}x{length:<4} "
                        f"plan {planned / 2**20:9.1f} MiB  measured {measured / 2**20:9.1f} MiB"
                        f"  plan/measured {row['ratio']:.3f}",
                        flush=True,
                    )
    worst = max(rows, key=lambda r: abs(r["ratio"] - 1))
    print(f"{len(rows)} cases -> {out.relative_to(ROOT)}; worst plan/measured {worst['ratio']:.3f}")
    print(render(rows))
    print(f"written: {out}; the docs' table: python bench/figures.py")


def save(rows: list[dict], out: Path) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "commit": commit, "command": "python bench/plan_memory.py"}  # fmt: skip
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({**meta, "cases": rows}, indent=1) + "\n")


def render(rows: list[dict]) -> str:
    """The plan-against-measured table from a plan-memory result's cases (bench/figures.py
    inserts it)."""
    lines = [
        "| model | method | precision | batch x tokens | plan | measured | plan / measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['task']}) | {r['method']} | {r['precision']} | "
            f"{r['batch']} x {r['tokens']} | {r['planned'] / 2**20:,.1f} MiB | "
            f"{r['measured'] / 2**20:,.1f} MiB | {r['ratio']:.3f} |"
        )
    lo, hi = min(r["ratio"] for r in rows), max(r["ratio"] for r in rows)
    lines.append("")
    lines.append(f"{len(rows)} cases: plan / measured from {lo:.3f} to {hi:.3f}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
