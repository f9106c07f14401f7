"""Is `tunelab plan` right? Its estimates against measurements on this machine: `make bench`.

1. State bytes (weights, gradients, fused AdamW state): the plan's count against the tensors
   after a real optimizer step, MiniLM, every method. Must be exact.
2. Activations: the plan's fake trace against the bytes autograd saves in a real forward
   (`torch.autograd.graph.saved_tensors_hooks`) for MiniLM, bert-base and a small Llama
   (SmolLM2-135M's config), random weights, two batch shapes each, fp32 and bf16 autocast,
   methods full / lora / prompt. Target: within 15%.
3. Time: the plan's training time against real `tunelab run`s of MiniLM on the built-in data
   (full, llrd, lora, prompt; 3,000 examples): calibrated (`--calibrate`), and learned from
   past run records (runs on 1,000 examples first). Target: within 20%.
4. Peak memory of those runs (process RSS above the level before the model) next to the
   plan's peak, for information: RSS also holds allocator slack and is no CUDA counter.

Writes bench/out/plan/plan-bench.json and the `<!-- bench:plan -->` block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import sh, write_results  # noqa: E402
from tunelab import fast, measure  # noqa: E402
from tunelab import planning as plan  # noqa: E402
from tunelab.config import load_config  # noqa: E402
from tunelab.methods import METHODS, build_method  # noqa: E402
from tunelab.optim import make_optimizer  # noqa: E402
from tunelab.results import read_record  # noqa: E402

HERE = Path(__file__).parent
TIMED = ["full", "llrd", "lora", "prompt"]


def models() -> dict:
    from transformers import BertConfig, LlamaConfig

    smollm2 = LlamaConfig(  # SmolLM2-135M's published config
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    return {
        "minilm": (plan.model_config("minilm", "classification", 2), "classification"),
        "bert-base": (BertConfig(num_labels=2), "classification"),
        "smollm2-135m (random)": (smollm2, "causal-lm"),
    }


def real(config, task: str, method: str):
    torch.manual_seed(0)
    model = build_method({"name": method}).prepare(plan.build(config, task))
    fast.install(model)
    return model


def state_check() -> list[dict]:
    config, task = models()["minilm"]
    rows = []
    for method in METHODS:
        if method == "prefix":
            continue
        model = real(config, task, method)
        opt = make_optimizer(build_method({"name": method}).param_groups(model, 1e-4, 0.01), 1e-4)
        model(**plan.training_batch(config, task, 8, 32)).loss.backward()
        opt.step()
        grads = sum(
            g.numel() * g.element_size() for p in model.parameters() if (g := p.grad) is not None
        )
        state = sum(
            t.numel() * t.element_size()
            for s in opt.state.values()
            for t in s.values()
            if torch.is_tensor(t)
        )
        t = plan.trace(config, task, {"name": method}, 8, 32, False, True)
        rows.append(
            {
                "method": method,
                "weights": [t["weights"], plan.state_bytes(model)["weights"]],
                "gradients": [t["gradients"], grads],
                "optimizer": [t["optimizer"], state],
            }
        )
    return rows


def activation_rows(name: str, method: str) -> list[dict]:
    """One model and method: the real saved bytes and the plan's, both precisions, two shapes."""
    config, task = models()[name]
    shapes = ((32, 64), (8, 256)) if task == "classification" else ((4, 128), (1, 512))
    model = real(config, task, method)
    rows = []
    for bf16 in (False, True):
        for batch, length in shapes:
            data = plan.training_batch(config, task, batch, length)
            got = measure.saved_activation_bytes(model, data, "cpu" if bf16 else None)
            est = plan.trace(config, task, {"name": method}, batch, length, bf16, True)
            rows.append(
                {
                    "model": name,
                    "method": method,
                    "precision": "bf16" if bf16 else "fp32",
                    "shape": [batch, length],
                    "plan": est["activations"],
                    "measured": got,
                    "error": est["activations"] / got - 1,
                }
            )
            print(
                f"activations {name} {method} {rows[-1]['precision']} {batch}x{length}: "
                f"{got / 2**20:.1f} MiB, plan {rows[-1]['error']:+.1%}",
                flush=True,
            )
    return rows


def activation_check() -> list[dict]:
    """Each model and method in a fresh process (memory comes back between them)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    rows = []
    ctx = mp.get_context("spawn")
    for name in models():
        for method in ("full", "lora", "prompt"):
            with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                rows += pool.submit(activation_rows, name, method).result()
    return rows


def tunelab_run(method: str, n: int, out: Path) -> dict:
    sh(
        [
            sys.executable, "-m", "tunelab", "run", f"method={method}",
            f"data.max_train_examples={n}", f"out_dir={out}", "tracker=none",
            "train.save_model=false", "train.test=false", "--overwrite",
        ]
    )  # fmt: skip
    rec = read_record(out / f"{method}-seed0")
    return {"train_s": rec.timing.train_s, "peak": rec.memory.peak_bytes}


def plan_rows(out: Path, n: int, calibrate: bool) -> dict[str, dict]:
    cfg = load_config(None, [f"out_dir={out}", f"data.max_train_examples={n}"])
    p = plan.plan(cfg, TIMED, calibrate_rate=calibrate)
    return {
        e.method: {
            "seconds": e.seconds,
            "peak": e.peak,
            "efficiency": e.efficiency,
            "from": e.efficiency_from,
        }
        for e in p.estimates
    }


def time_check(out: Path, n: int, warm: int) -> dict:
    """Calibrated estimates, then runs on ``warm`` examples (for the learned rate), then
    estimates from those records, then the measured runs on ``n`` examples."""
    cal = plan_rows(out / "calibrated", n, calibrate=True)
    for m in TIMED:
        tunelab_run(m, warm, out / "learned")
    learned = plan_rows(out / "learned", n, calibrate=False)
    measured = {m: tunelab_run(m, n, out / "measured") for m in TIMED}
    return {"calibrated": cal, "learned": learned, "measured": measured}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "out" / "plan"))
    ap.add_argument("--train-examples", type=int, default=3000)
    ap.add_argument("--warm-examples", type=int, default=1000)
    ap.add_argument(
        "--reuse-time", action="store_true", help="keep the time section of the last result"
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "plan-bench.json"
    if args.reuse_time:
        old = json.loads(last.read_text())
        timed = lambda: old["time"]  # noqa: E731
    else:
        timed = lambda: time_check(out, args.train_examples, args.warm_examples)  # noqa: E731
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": measure.environment(torch.device("cpu")),
        "bf16_peak": plan.peak_flops("bf16"),
        "fp32_peak": plan.peak_flops("no"),
        "state": state_check(),
        "activations": activation_check(),
        "time": timed(),
        "examples": args.train_examples,
    }
    (out / "plan-bench.json").write_text(json.dumps(result, indent=1))
    write_results(HERE / "RESULTS.md", "plan", results_md(result))
    print(results_md(result))


def results_md(r: dict) -> str:
    env = r["machine"]
    lines = [
        "### plan: estimates against measurements",
        "",
        f"Measured {r['measured_at']} on {env['cpu']}, {env['cpu_count']} cores; matmul peak "
        f"{r['fp32_peak'] / 1e9:.0f} GFLOP/s fp32, {r['bf16_peak'] / 1e9:.0f} GFLOP/s bf16.",
        "",
        "State bytes (MiniLM, one real fused-AdamW step):",
        "",
        "| method | weights plan / real | gradients plan / real | AdamW state plan / real |",
        "|---|---|---|---|",
    ]
    for s in r["state"]:
        cells = [
            f"{a:,} / {b:,}{'' if a == b else ' **differs**'}"
            for a, b in (s["weights"], s["gradients"], s["optimizer"])
        ]
        lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    exact = all(
        a == b for s in r["state"] for k in ("weights", "gradients", "optimizer") for a, b in [s[k]]
    )
    lines += ["", f"All exact: {'yes' if exact else 'NO'}.", ""]
    lines += [
        "Activations saved for backward (random weights, fast CPU paths on, as `tunelab run`):",
        "",
        "| model | method | precision | batch x length | measured MiB | plan error |",
        "|---|---|---|---|---|---|",
    ]
    for a in r["activations"]:
        lines.append(
            f"| {a['model']} | {a['method']} | {a['precision']} | {a['shape'][0]} x "
            f"{a['shape'][1]} | {a['measured'] / 2**20:,.1f} | {a['error']:+.2%} |"
        )
    worst = max(abs(a["error"]) for a in r["activations"])
    lines += ["", f"Largest activation error: {worst:.2%} (target 15%).", ""]
    t = r["time"]
    lines += [
        f"Training time, MiniLM on {r['examples']:,} built-in examples, default precision:",
        "",
        "| method | measured s | calibrated plan s (error) | learned-from-records plan s (error) "
        "| measured peak RSS MiB | plan peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    errs = []
    for m, meas in t["measured"].items():
        c, lr = t["calibrated"][m], t["learned"][m]
        ec, el = c["seconds"] / meas["train_s"] - 1, lr["seconds"] / meas["train_s"] - 1
        errs += [abs(ec), abs(el)]
        lines.append(
            f"| {m} | {meas['train_s']:.1f} | {c['seconds']:.1f} ({ec:+.0%}) | "
            f"{lr['seconds']:.1f} ({el:+.0%}, {lr['from']}) | {meas['peak'] / 2**20:,.0f} | "
            f"{c['peak'] / 2**20:,.0f} |"
        )
    lines += ["", f"Largest time error: {max(errs):.0%} (target 20%)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
