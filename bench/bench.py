"""tunelab vs the plain Hugging Face recipe, on the same work: `make bench`.

Per method (full, llrd, freeze, lora, prompt): one tunelab run and one `bench/hf_baseline.py`
run, each in a fresh process, same data / model / lr / batch / epochs / max length / seed, the
order alternating between methods to cancel machine drift. Then the end-to-end four-method
comparison: one `tunelab compare` process against the four baseline processes. Also measures
the machine's fp32 matmul peak and each side's model FLOP utilisation (MFU).

Writes bench/out/bench-<precision>.json and the generated block of bench/RESULTS.md (between
its `<!-- bench:<precision> -->` markers; the analysis around them is kept).
`--precision bf16` runs both sides under bf16 autocast (an opt-in lever, not the target's
fp32 comparison).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from tunelab.measure import matmul_peak
from tunelab.results import read_record

HERE = Path(__file__).parent
ROOT = HERE.parent
METHODS = ["full", "llrd", "freeze", "lora", "prompt"]
ARTICLE = ["full", "llrd", "lora", "prompt"]
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16"}  # --precision -> train.mixed_precision


def sh(cmd: list[str]) -> float:
    """Run a command, fail loudly, return its wall-clock seconds."""
    t = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"},
    )
    if proc.returncode:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def tunelab_run(method: str, n: int, out: Path, precision: str) -> dict:
    wall = sh(
        [
            sys.executable,
            "-m",
            "tunelab",
            "run",
            f"method={method}",
            f"data.max_train_examples={n}",
            f"out_dir={out}",
            "tracker=none",
            "train.save_model=false",
            f"train.mixed_precision={MIXED_PRECISION[precision]}",
            "--overwrite",
        ]
    )
    rec = read_record(out / f"{method}-seed0")
    return {
        "examples_per_s": rec.timing.examples_per_s,
        "tokens_per_s": rec.timing.tokens_per_s,
        "train_s": rec.timing.train_s,
        "test_accuracy": rec.test.accuracy,
        "lr": rec.lr,
        "wall_s": wall,
        "flops_per_token": rec.flops_per_token.total,
    }


def hf_run(method: str, n: int, lr: float, out: Path, precision: str) -> dict:
    path = out / f"hf-{method}.json"
    script = str(HERE / "hf_baseline.py")
    wall = sh([sys.executable, script, method, str(n), repr(lr), str(path), precision])
    return {**json.loads(path.read_text()), "wall_s": wall}


def mean_run(runs: list[dict]) -> dict:
    """Rounds of the same run: throughput averaged as total work / total time (so a slow
    round weighs by its length), accuracy from the first round (runs are seeded, but the two
    sides' RNG streams differ)."""
    out = dict(runs[0])
    train_s = sum(r["train_s"] for r in runs)
    out["train_s"] = train_s / len(runs)
    out["examples_per_s"] = sum(r["examples_per_s"] * r["train_s"] for r in runs) / train_s
    out["tokens_per_s"] = sum(r["tokens_per_s"] * r["train_s"] for r in runs) / train_s
    out["wall_s"] = sum(r["wall_s"] for r in runs) / len(runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-examples", type=int, default=3000)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(HERE / "out"))
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--rounds", type=int, default=2, help="runs per side and method (ABBA)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from tunelab.methods import build_method

    prec = args.precision
    peak = matmul_peak(torch.bfloat16 if prec == "bf16" else torch.float32)
    print(f"{prec} matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for i, method in enumerate(args.methods.split(",")):
        lr = build_method({"name": method}).lr
        tls, hfs = [], []
        for r in range(args.rounds):
            if (i + r) % 2 == 0:  # alternate who goes first: ABBA cancels machine drift
                tls.append(tunelab_run(method, args.train_examples, out / "tl", prec))
                hfs.append(hf_run(method, args.train_examples, lr, out, prec))
            else:
                hfs.append(hf_run(method, args.train_examples, lr, out, prec))
                tls.append(tunelab_run(method, args.train_examples, out / "tl", prec))
        tl, hf = mean_run(tls), mean_run(hfs)
        fpt = tl["flops_per_token"]
        ratios = [a["examples_per_s"] / b["examples_per_s"] for a, b in zip(tls, hfs, strict=True)]
        row = {
            "method": method,
            "lr": lr,
            "tunelab": tl,
            "hf": hf,
            "rounds": {"tunelab": tls, "hf": hfs},
            "speedup": tl["examples_per_s"] / hf["examples_per_s"],
            "speedup_range": [min(ratios), max(ratios)],
            "mfu_tunelab": fpt * tl["tokens_per_s"] / peak,
            "mfu_hf": fpt * hf["tokens_per_s"] / peak,
        }
        rows.append(row)
        print(
            f"{method:7s} tunelab {tl['examples_per_s']:6.1f} ex/s  "
            f"hf {hf['examples_per_s']:6.1f} ex/s  x{row['speedup']:.2f} "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f})  "
            f"acc {100 * tl['test_accuracy']:.2f} vs "
            f"{100 * hf['test_accuracy']:.2f}",
            flush=True,
        )
    e2e = None
    if not args.skip_e2e and all(m in args.methods.split(",") for m in ARTICLE):
        wall = sh(
            [
                sys.executable,
                "-m",
                "tunelab",
                "compare",
                "--methods",
                ",".join(ARTICLE),
                "--max-train-examples",
                str(args.train_examples),
                "--out",
                str(out / "compare"),
                "--tracker",
                "none",
                "--no-report",
                "train.save_model=false",
                f"train.mixed_precision={MIXED_PRECISION[prec]}",
                "--overwrite",
            ]
        )
        hf_wall = sum(r["hf"]["wall_s"] for r in rows if r["method"] in ARTICLE)
        e2e = {"tunelab_s": wall, "hf_s": hf_wall, "speedup": hf_wall / wall}
        print(
            f"end-to-end 4-method comparison: tunelab {wall:.0f}s, plain recipe "
            f"{hf_wall:.0f}s, x{e2e['speedup']:.2f}",
            flush=True,
        )
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "packages": {
            p: metadata.version(p)
            for p in ("torch", "transformers", "peft", "accelerate", "datasets")
        },
        "train_examples": args.train_examples,
        "precision": prec,
        "rounds": args.rounds,
        "peak_flops": peak,
        "rows": rows,
        "e2e": e2e,
    }
    (out / f"bench-{prec}.json").write_text(json.dumps(result, indent=2))
    write_results(HERE / "RESULTS.md", prec, results_md(result))
    print(f"\nwrote {HERE / 'RESULTS.md'}")


def write_results(path: Path, precision: str, block: str) -> None:
    """Replace the generated block for this precision, keeping everything around it."""
    start, end = f"<!-- bench:{precision} -->", f"<!-- /bench:{precision} -->"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmark: tunelab vs the plain Hugging Face recipe\n"
    )
    block = f"{start}\n{block.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def results_md(r: dict) -> str:
    geo = math.exp(sum(math.log(x["speedup"]) for x in r["rows"]) / len(r["rows"]))
    prec = r["precision"]
    lines = [
        f"### {prec} ({'both sides under bf16 autocast' if prec == 'bf16' else 'full precision'})",
        "",
        f"Measured {r['date']} on {r['machine']}; "
        + ", ".join(f"{k} {v}" for k, v in r["packages"].items())
        + ".",
        f"MiniLM-L6 on {r['train_examples']} Rotten Tomatoes training snippets, batch 32, "
        "1 epoch, max length 128, seed 0, each method at its own default lr (the same on both "
        f"sides). {prec} matmul peak of this machine: "
        f"{r['peak_flops'] / 1e9:.1f} GFLOP/s.",
        "",
        f"Examples/s: mean over {r['rounds']} alternating rounds per side; speedup "
        "range: the ratio within each round.",
        "",
        "| method | lr | tunelab ex/s | HF ex/s | speedup | range | tunelab tok/s | HF tok/s | "
        "tunelab MFU | HF MFU | tunelab test acc | HF test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        tl, hf = x["tunelab"], x["hf"]
        lo, hi = x["speedup_range"]
        lines.append(
            f"| {x['method']} | {x['lr']:g} | {tl['examples_per_s']:.1f} | "
            f"{hf['examples_per_s']:.1f} | {x['speedup']:.2f}x | "
            f"{lo:.2f}-{hi:.2f} | {tl['tokens_per_s']:.0f} | "
            f"{hf['tokens_per_s']:.0f} | {100 * x['mfu_tunelab']:.0f}% | "
            f"{100 * x['mfu_hf']:.0f}% | {100 * tl['test_accuracy']:.2f} | "
            f"{100 * hf['test_accuracy']:.2f} |"
        )
    lines += ["", f"Geometric mean speedup: {geo:.2f}x."]
    if r["e2e"]:
        e = r["e2e"]
        lines.append(
            f"End-to-end four-method comparison (full, llrd, lora, prompt; process "
            f"start to finish): tunelab {e['tunelab_s']:.0f}s vs plain recipe "
            f"{e['hf_s']:.0f}s: {e['speedup']:.2f}x."
        )
    lines += [
        "",
        "MFU = training FLOPs per real token (6N-rule estimate, see "
        f"`tunelab.measure.flops_per_token`) x real tokens/s / {prec} matmul peak.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
