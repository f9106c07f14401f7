"""The decoder's training step with the LM head on the labelled positions only against the
head over every position (today's step before issue 21), on the built-in SmolLM2-135M,
classification as text on the built-in reviews (the decoder demo's task and batch).

    python bench/lm_head_bench.py                 # LoRA (default knobs), 3 rounds
    python bench/lm_head_bench.py --method full --rounds 2
    python bench/lm_head_bench.py --task sft      # instruction data (SFT): response tokens only

SFT rows are built from the same snippets: the prompt asks for a one-sentence review of the
snippet's sentiment (through SmolLM2's chat template), the response is the snippet; the loss
covers the response and its end-of-sequence token.

Both paths are `CausalLM.forward` in training mode (`head_on_labels` True / False) on the same
model, batches, optimizer and precision (train.mixed_precision=auto's choice here), timed
alternately in one process, ABAB..., each round the same batches; the first batch of each path
is a warm-up, not timed. Also: the loss of both paths on the same batch and weights (relative
difference), and the process's peak RSS is not compared (one process holds both). Writes
bench/results/lm-head-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))


def main() -> None:
    import torch

    from tunelab import fast
    from tunelab.config import load_config
    from tunelab.models import load_model
    from tunelab.optim import make_optimizer
    from tunelab.precision import precision
    from tunelab.tasks import prepare_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="lora")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per path per round")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--task", choices=["labels", "sft"], default="labels")
    args = ap.parse_args()
    over = [f"train.batch_size={args.batch}", f"method.name={args.method}", "tracker=none"]
    if args.task == "sft":
        over += [f"data.dataset={sft_rows(args.steps + 1, args.batch)}",
                 "data.response_column=response"]  # fmt: skip
    cfg = load_config(str(HERE.parent / "configs" / "decoder-demo.yaml"), over)
    data = prepare_data(cfg)
    task, pad = data.task, data.tokenizer.pad_token_id
    torch.manual_seed(0)
    model = load_model(cfg.model.name, data.splits.label_names, pad, lm_head=True)
    model = cfg.method.prepare(model)
    if cfg.train.fast_cpu:  # as the loop does on a CPU
        fast.tune_allocator()
        fast.install(model)
    model.train()
    opt = make_optimizer(cfg.method.param_groups(model, 1e-5, 0.0), 1e-5)
    mp = precision(cfg.train.mixed_precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
    cast = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    n = args.batch
    batches = [
        task.collate(data.train, list(range(i * n, (i + 1) * n)), pad)
        for i in range(args.steps + 1)
    ]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])

    def step(batch) -> float:
        with cast:
            loss, _ = task.forward(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    def timed(on_labels: bool) -> float:
        task.head_on_labels = on_labels
        step(batches[0])  # warm-up
        t0 = time.perf_counter()
        for b in batches[1:]:
            step(b)
        return args.steps * n / (time.perf_counter() - t0)

    # the loss of both paths on one batch and the same weights (no step in between)
    with torch.no_grad(), cast:
        task.head_on_labels = True
        a = task.forward(model, batches[0])[0].item()
        task.head_on_labels = False
        b = task.forward(model, batches[0])[0].item()
    rates: dict[str, list[float]] = {"labelled": [], "every_position": []}
    for r in range(args.rounds):
        rates["labelled"].append(timed(True))
        rates["every_position"].append(timed(False))
        print(f"round {r}: labelled {rates['labelled'][-1]:.2f} ex/s, every position "
              f"{rates['every_position'][-1]:.2f} ex/s", flush=True)  # fmt: skip
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "cores": os.cpu_count(),
        "model": "smollm2 (SmolLM2-135M-Instruct, packaged)",
        "method": args.method,
        "task": "classification as text" if args.task == "labels" else "SFT (instruction)",
        "labelled_per_step": sum(int((b["labels"] != -100).sum()) for b in batches[1:])
        / args.steps,
        "precision": mp,
        "batch": n,
        "tokens_per_step": tokens / args.steps,
        "vocab": int(model.get_input_embeddings().weight.shape[0]),
        "examples_per_s": rates,
        "speedup": round(mean["labelled"] / mean["every_position"], 3),
        "loss_labelled": a,
        "loss_every_position": b,
        "loss_rel_diff": abs(a - b) / abs(b),
    }
    tag = args.method if args.task == "labels" else f"{args.method}-sft"
    path = HERE / "results" / f"lm-head-{result['date'][:10]}-{tag}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("speedup", "loss_rel_diff", "precision")}))
    print(f"written: {path}")


def sft_rows(steps: int, batch: int) -> Path:
    """Instruction rows from the built-in snippets, as a JSONL file (see the docstring)."""
    from tunelab.config import DataConfig
    from tunelab.data import load_splits

    split = load_splits(DataConfig()).train
    words = ["negative", "positive"]
    rows = [
        {"prompt": f"Write a one-sentence {words[y]} movie review.", "response": text}
        for text, y in zip(split.texts, split.labels, strict=True)
    ][: 4 * steps * batch]  # training + validation/test splits carved from these
    path = Path("/tmp/tunelab-sft-bench.jsonl")
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


if __name__ == "__main__":
    main()
