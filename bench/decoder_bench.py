"""The decoder path against the plain recipe a user would write for it: trl's SFTTrainer with
completion-only loss (prompt = the review in tunelab's template, completion = the label word),
LoRA (peft, r=8, alpha=16, q/v) and full fine-tuning of the built-in SmolLM2-135M, same
examples, batch, epochs, lr, schedule, seed and precision on both sides (tunelab's automatic
choice for this machine: bf16 autocast where the CPU computes bf16 natively, which trl gets
as bf16=True; else fp32 on both), each in a fresh process.

Two clocks on each side: the wall time of the whole training phase (trl's train_runtime;
tunelab's training steps plus its validations and checkpoints, from the run record), and the
optimizer steps alone (tunelab's examples/s of its training steps; trl's time from each
step's on_step_begin to its on_step_end, summed: forward, backward, clipping, optimizer,
scheduler, without data loading and logging, which tunelab's steps include).

Writes bench/results/decoder-bench-<date>.json and the generated block of bench/RESULTS.md
(between its `<!-- bench:decoder -->` markers).
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
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class StepClock(TrainerCallback):
        seconds = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            StepClock.seconds += time.perf_counter() - self.t0

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
        bf16=precision() == "bf16",  # the same precision as tunelab's automatic choice
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
        callbacks=[StepClock()],
    )
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    return {
        "examples_per_s": n / seconds,
        "train_s": seconds,
        "steps_s": StepClock.seconds,
        "steps_examples_per_s": n / StepClock.seconds,
        "loss": result.training_loss,
        "precision": "bf16" if args.bf16 else "fp32",
    }


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
    wall = rec.timing.train_s + rec.timing.eval_s
    return {
        "examples_per_s": n / wall,
        "train_s": wall,
        "steps_s": rec.timing.train_s,
        "steps_examples_per_s": rec.timing.examples_per_s,
        "val_accuracy": rec.best_validation.accuracy,
        "precision": rec.env.precision,
    }


def precision() -> str:
    """tunelab's automatic precision on this machine ("bf16" or "no")."""
    sys.path.insert(0, str(ROOT / "src"))
    from tunelab.precision import precision as choose

    return choose("auto")


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
        tl, trl = sides["tunelab"], sides["trl"]
        assert tl["precision"].replace("no", "fp32") == trl["precision"], (tl, trl)
        ratio = tl["examples_per_s"] / trl["examples_per_s"]
        steps = tl["steps_examples_per_s"] / trl["steps_examples_per_s"]
        rows.append({"method": method, **sides, "speedup": ratio, "steps_speedup": steps})
        print(f"{method}: steps x{steps:.2f}, whole training phase x{ratio:.2f}", flush=True)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "train_examples": args.train_examples,
        "batch_size": args.batch_size,
        "rows": rows,
    }
    day = result["date"][:10]
    (HERE / "results" / f"decoder-bench-{day}.json").write_text(json.dumps(result, indent=2))
    write_results(HERE / "RESULTS.md", "decoder", results_md(result))


def results_md(r: dict) -> str:
    prec = r["rows"][0]["trl"]["precision"]
    lines = [
        "### Decoder: tunelab vs trl SFTTrainer (completion-only loss)",
        "",
        f"Measured {r['date']}; SmolLM2-135M-Instruct (built-in), {r['train_examples']} "
        f"Rotten Tomatoes snippets as `Review: ...\\nSentiment:` + label word, batch "
        f"{r['batch_size']}, one epoch, **{prec} on both sides**, tunelab's default lr on both "
        f"sides, trl at its defaults otherwise. Steps: the optimizer steps alone (forward, "
        f"backward, optimizer; trl's from on_step_begin to on_step_end); training phase: "
        f"trl's train_runtime against tunelab's steps plus its validations.",
        "",
        "| method | precision | tunelab steps ex/s | trl steps ex/s | steps speedup "
        "| tunelab phase ex/s | trl phase ex/s | phase speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        tl, trl = x["tunelab"], x["trl"]
        lines.append(
            f"| {x['method']} | {trl['precision']} | {tl['steps_examples_per_s']:.2f} | "
            f"{trl['steps_examples_per_s']:.2f} | {x['steps_speedup']:.2f}x | "
            f"{tl['examples_per_s']:.2f} | {trl['examples_per_s']:.2f} | {x['speedup']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
