"""The decoder path against the plain recipe a user would write for it: trl's SFTTrainer with
completion-only loss (prompt = the review in tunelab's template, completion = the label word),
LoRA (peft, r=8, alpha=16, q/v) and full fine-tuning of the built-in SmolLM2-135M, same
examples, batch, epochs, lr, schedule and seed on both sides, each in a fresh process.

Writes bench/out/decoder-bench.json and the generated block of bench/RESULTS.md (between its
`<!-- bench:decoder -->` markers).
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

from bench import write_results  # bench/bench.py: rewrites one generated block of RESULTS.md

HERE = Path(__file__).parent
ROOT = HERE.parent
LR = {"lora": 2e-3, "full": 5e-5}  # tunelab's defaults, used on both sides


def trl_side(method: str, n: int, batch: int, out: Path) -> dict:
    """Runs in its own process: trl SFTTrainer on the same prompts and completions."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunelab.config import DataConfig, RunConfig
    from tunelab.data import load_splits
    from tunelab.models import smollm2

    split = load_splits(DataConfig(max_train_examples=n)).train
    template, words = RunConfig().data.template, ["negative", "positive"]
    ds = Dataset.from_dict(
        {
            "prompt": [template.format(text=t) for t in split.texts],
            "completion": [" " + words[y] for y in split.labels],
        }
    )
    torch.manual_seed(0)
    path = smollm2()
    model = AutoModelForCausalLM.from_pretrained(path)
    args = SFTConfig(
        output_dir=str(out / f"trl-{method}"),
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=LR[method],
        lr_scheduler_type="linear",
        warmup_steps=0.06,
        weight_decay=0.01,
        max_grad_norm=1.0,
        completion_only_loss=True,
        max_length=128,
        logging_steps=20,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
    )
    peft = (
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.1,
            target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM",
        )
        if method == "lora"
        else None
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(path),
        peft_config=peft,
    )
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    return {"examples_per_s": n / seconds, "train_s": seconds, "loss": result.training_loss}


def tunelab_side(method: str, n: int, batch: int, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tunelab",
        "run",
        "model.name=smollm2",
        "task=causal-lm",
        f"method={method}",
        f"data.max_train_examples={n}",
        "data.max_eval_examples=100",
        f"train.batch_size={batch}",
        "tracker=none",
        "train.save_model=false",
        f"out_dir={out / 'tl'}",
        "--overwrite",
    ]
    _sh(cmd)
    from tunelab.results import read_record

    rec = read_record(out / "tl" / f"{method}-causal-lm-seed0")
    return {
        "examples_per_s": rec.timing.examples_per_s,
        "train_s": rec.timing.train_s,
        "val_accuracy": rec.best_validation.accuracy,
    }


def _sh(cmd: list[str]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-examples", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--out", default=str(HERE / "out" / "decoder"))
    ap.add_argument("--trl-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.trl_worker:  # the child process of the trl side
        print(json.dumps(trl_side(args.trl_worker, args.train_examples, args.batch_size, out)))
        return
    rows = []
    for i, method in enumerate(args.methods.split(",")):
        sides = {}
        for side in ("tunelab", "trl") if i % 2 == 0 else ("trl", "tunelab"):
            if side == "tunelab":
                sides[side] = tunelab_side(method, args.train_examples, args.batch_size, out)
            else:
                cmd = [
                    sys.executable,
                    __file__,
                    "--trl-worker",
                    method,
                    "--out",
                    str(out),
                    "--train-examples",
                    str(args.train_examples),
                    "--batch-size",
                    str(args.batch_size),
                ]
                sides[side] = json.loads(_sh(cmd).strip().splitlines()[-1])
        ratio = sides["tunelab"]["examples_per_s"] / sides["trl"]["examples_per_s"]
        rows.append({"method": method, **sides, "speedup": ratio})
        print(
            f"{method}: tunelab {sides['tunelab']['examples_per_s']:.2f} ex/s, trl "
            f"{sides['trl']['examples_per_s']:.2f} ex/s, x{ratio:.2f}",
            flush=True,
        )
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "train_examples": args.train_examples,
        "batch_size": args.batch_size,
        "rows": rows,
    }
    (out / "decoder-bench.json").write_text(json.dumps(result, indent=2))
    write_results(HERE / "RESULTS.md", "decoder", results_md(result))


def results_md(r: dict) -> str:
    lines = [
        "### Decoder: tunelab vs trl SFTTrainer (completion-only loss)",
        "",
        f"Measured {r['date']}; SmolLM2-135M-Instruct (built-in), {r['train_examples']} "
        f"Rotten Tomatoes snippets as `Review: ...\\nSentiment:` + label word, batch "
        f"{r['batch_size']}, one epoch, fp32, tunelab's default lr on both sides.",
        "",
        "| method | tunelab ex/s | trl ex/s | speedup |",
        "|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['method']} | {x['tunelab']['examples_per_s']:.2f} | "
            f"{x['trl']['examples_per_s']:.2f} | {x['speedup']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
