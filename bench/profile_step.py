"""Where a training step's time goes: torch.profiler over tunelab's own step (`train.setup` and
`train.train_step`, the loop's code, not a copy), self CPU time by kind of op.

    python bench/profile_step.py                         # the default cases below
    python bench/profile_step.py --cases minilm:full:bf16,smollm2:lora:fp32:8 --steps 10

A case is MODEL:METHOD:PRECISION[:BATCH]: MODEL minilm (the built-in encoder, batch 32 on
the built-in reviews) or smollm2 (configs/decoder-demo.yaml, batch 16), PRECISION fp32 or
bf16 (autocast; the frozen base stored as `model.base_dtype=auto` decides). Each case runs in
a fresh process: `--warmup` steps, then `--steps` steps under the profiler. An op's self time
goes to the first category whose pattern matches its name (CATEGORIES); time in no op
(Python, collate, the loop) is the step's wall time minus all ops' self time. Also the
step's achieved FLOP/s by the run records' own count (`flops_per_token` x real tokens) and its
fraction of this machine's matmul peak in the case's precision (`plan.peak_flops`).

Writes bench/results/profile-<date>.json and the `<!-- bench:profile -->` block of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
CASES = ",".join(
    ["minilm:full:fp32", "minilm:lora:fp32", "smollm2:lora:fp32", "minilm:full:bf16",
     "minilm:lora:bf16", "smollm2:lora:bf16:4"]  # emulated bf16 (no AMX): a smaller batch
)  # fmt: skip
CATEGORIES = [  # (category, pattern on the op's name); first match wins
    ("attention (sdpa)", r"scaled_dot_product|flash_attention|efficient_attention"),
    ("matrix products", r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|addbmm)$|mkldnn|onednn"),
    ("casts and copies", r"^aten::(_to_copy|to|copy_|clone|contiguous|_autocast_to_\w+)$"),
    ("norms and softmax", r"layer_norm|rms_norm|^aten::_softmax|softmax_backward"),
    ("loss", r"log_softmax|nll_loss|cross_entropy"),
    ("dropout", r"dropout|bernoulli|^_Dropout$"),
    ("activations", r"gelu|silu|tanh|relu|sigmoid"),
    ("embeddings", r"embedding"),
    ("optimizer and clipping", r"adam|_foreach|Optimizer\.|clip_grad|addcdiv|lerp|vector_norm"),
    ("autograd bookkeeping", r"^autograd::|Backward\d*$|^torch::autograd"),
    ("other elementwise", r"^aten::"),
]
NOT_OPS = r"^ProfilerStep|^\[memory\]"
OUTSIDE = "outside ops (Python, collate, loop)"


def one_case(case: str, warmup: int, steps: int) -> dict:
    """Profile one case in this process; returns its row."""
    from torch.profiler import ProfilerActivity, profile

    from tunelab import measure, train
    from tunelab.config import load_config
    from tunelab.planning import peak_flops
    from tunelab.results import RunRecord

    model, method, prec, *batch = case.split(":")
    over = [f"method.name={method}", "tracker=none", "train.save_model=false"]
    over += [f"train.mixed_precision={'bf16' if prec == 'bf16' else 'no'}"]
    over += [f"train.batch_size={batch[0]}"] if batch else []
    config = ROOT / "configs" / "decoder-demo.yaml" if model == "smollm2" else None
    n = (warmup + steps) * int(batch[0] if batch else 32 if model == "minilm" else 16)
    cfg = load_config(config, [*over, f"data.max_train_examples={max(n, 64)}"])
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        record = RunRecord.start(run_dir, cfg.method.name, cfg)
        s = train.setup(cfg, cfg.method, run_dir, record)
        s.model.train()
        plan = train.epoch_steps(s, 0)[: warmup + steps]
        if len(plan) < warmup + steps:
            sys.exit(f"{case}: only {len(plan)} steps of data")
        win = measure.Window(s.acc.device, s.data.task.has_accuracy)
        for i, micro in enumerate(plan[:warmup]):
            train.train_step(s, micro, win, i)
        tokens = sum(s.data.train.lengths[j] for micro in plan[warmup:] for idx, _ in micro
                     for j in idx)  # fmt: skip
        examples = sum(len(idx) for micro in plan[warmup:] for idx, _ in micro)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for i, micro in enumerate(plan[warmup:]):
                train.train_step(s, micro, win, warmup + i)
            wall = time.perf_counter() - t
        win.summary()  # the window's loss: a NaN here would make the profile meaningless
        fpt = record.flops_per_token.total
    peak = peak_flops(prec)  # the plan's own measure of this machine's peak
    shares = categorise(prof.key_averages(), wall)
    return {
        "case": case,
        "precision": str(s.acc.mixed_precision),
        "weights": record.env.weights,
        "steps": steps,
        "examples": examples,
        "tokens": tokens,
        "step_ms": 1000 * wall / steps,
        "ms_per_step": {k: v / steps for k, v in shares["ms"].items()},
        "top_ops": shares["top"],
        "flops_per_token": fpt,
        "flops_per_s": fpt * tokens / wall,
        "peak_flops": peak,
        "fraction_of_peak": fpt * tokens / wall / peak,
    }


def categorise(events, wall_s: float) -> dict:
    """Self CPU milliseconds per category (and the step time in no op), and the 12 ops with
    the most self time."""
    ms = {name: 0.0 for name, _ in CATEGORIES}
    ops = []
    for e in events:
        if re.search(NOT_OPS, e.key):
            continue
        self_ms = e.self_cpu_time_total / 1000
        cat = next((c for c, pat in CATEGORIES if re.search(pat, e.key)), "other elementwise")
        ms[cat] += self_ms
        ops.append((self_ms, e.key, cat))
    ms[OUTSIDE] = max(0.0, 1000 * wall_s - sum(ms.values()))
    top = [{"op": k, "ms": m, "category": c} for m, k, c in sorted(ops, reverse=True)[:12]]
    return {"ms": ms, "top": top}


def table(rows: list[dict]) -> str:
    cats = [c for c, _ in CATEGORIES] + [OUTSIDE]
    head = "| | " + " | ".join(r["case"] for r in rows) + " |"
    lines = [head, "|---" * (len(rows) + 1) + "|"]
    lines.append("| step (ms) | " + " | ".join(f"{r['step_ms']:.0f}" for r in rows) + " |")
    for c in cats:
        cells = [f"{100 * r['ms_per_step'][c] / r['step_ms']:.1f}%" for r in rows]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append(
        "| achieved GFLOP/s (records' count) | "
        + " | ".join(f"{r['flops_per_s'] / 1e9:.1f}" for r in rows)
        + " |"
    )
    lines.append(
        "| matmul peak, its precision (GFLOP/s) | "
        + " | ".join(f"{r['peak_flops'] / 1e9:.1f}" for r in rows)
        + " |"
    )
    lines.append(
        "| fraction of that peak | "
        + " | ".join(f"{100 * r['fraction_of_peak']:.0f}%" for r in rows)
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=CASES)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a case, in its own process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_case(args.one, args.warmup, args.steps)))
        return
    import torch

    rows = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    for case in args.cases.split(","):
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--one", case, "--warmup", str(args.warmup),
               "--steps", str(args.steps)]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if proc.returncode:
            sys.exit(f"{case} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{case}: {rows[-1]['step_ms']:.0f} ms/step ({time.perf_counter() - t:.0f} s)")
    from bench import machine, write_results  # noqa: PLC0415 (bench/bench.py, next to this)

    date = datetime.now(timezone.utc)
    result = {
        "date": date.isoformat(timespec="minutes"),
        "machine": machine(),
        "torch": torch.__version__,
        "warmup": args.warmup,
        "rows": rows,
    }
    out = HERE / "results" / f"profile-{date:%Y-%m-%d}.json"
    out.write_text(json.dumps(result, indent=2))

    block = (
        f"### Where a training step's time goes (`bench/profile_step.py`)\n\n"
        f"Measured {result['date']} on {result['machine']}; torch {result['torch']}. "
        f"Self CPU time per step by kind of op, {args.steps} profiled steps after "
        f"{args.warmup} warm-up steps, tunelab's own `train_step`; raw: `{out.relative_to(ROOT)}`."
        "\n\n" + table(rows)
    )
    write_results(HERE / "RESULTS.md", "profile", block)
    print(table(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
