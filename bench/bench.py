"""tunelab vs the plain Hugging Face recipe, on the same work: `make bench`.

Per method (full, llrd, freeze, lora, prompt): one tunelab run and one `bench/hf_baseline.py`
run, each in a fresh process, same data / model / lr / batch / epochs / max length / seed, the
order alternating between methods to cancel machine drift. Then the end-to-end four-method
comparison: one `tunelab compare` process against the four baseline processes. Also measures
the machine's matmul peak in each side's precision and each side's model FLOP utilisation.

Two comparisons in one run (`--precision defaults,bf16`, the default):
- defaults: each side at its own defaults, as a user gets them: tunelab
  `train.mixed_precision=auto` (bf16 autocast where the hardware computes bf16 natively, fp32
  elsewhere), the Trainer at `bf16=False` (its default; fp32);
- bf16: both sides under bf16 autocast (the Trainer with `bf16=True`, the user's obvious
  move): tunelab's own merit at equal precision (full, lora, prompt). Skipped, with the
  reason, where bf16 would be emulated (a CPU without AMX or AVX512-BF16, no GPU):
  `--precision bf16` measures it anyway.
`--precision fp32` runs both sides in fp32.

Writes bench/results/bench-<precision>-<date>.json (and bench/out/bench-<precision>.json) and the
generated block of bench/RESULTS.md (between
its `<!-- bench:<precision> -->` markers; the analysis around them is kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from tunelab.planning import peak_flops
from tunelab.results import read_record

HERE = Path(__file__).parent
ROOT = HERE.parent
METHODS = ["full", "llrd", "freeze", "lora", "prompt"]
ARTICLE = ["full", "llrd", "lora", "prompt"]
EQUAL_BF16 = ["full", "lora", "prompt"]
# --precision -> (tunelab's train.mixed_precision, the plain recipe's precision)
PRECISIONS = {"defaults": ("auto", "fp32"), "fp32": ("no", "fp32"), "bf16": ("bf16", "bf16")}


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
            f"train.mixed_precision={PRECISIONS[precision][0]}",
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
        "precision": "bf16" if rec.env.precision == "bf16" else "fp32",
    }


def hf_run(method: str, n: int, lr: float, out: Path, precision: str) -> dict:
    path = out / f"hf-{method}.json"
    script = str(HERE / "hf_baseline.py")
    hf_precision = PRECISIONS[precision][1]
    wall = sh([sys.executable, script, method, str(n), repr(lr), str(path), hf_precision])
    return {**json.loads(path.read_text()), "wall_s": wall, "precision": hf_precision}


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
    ap.add_argument("--methods", help="default: all five; bf16: full, lora, prompt")
    ap.add_argument("--out", default=str(HERE / "out"))
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--rounds", type=int, default=2, help="runs per side and method (ABBA)")
    ap.add_argument("--precision", default="defaults,bf16", help="defaults, bf16, fp32")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    asked, why = args.precision.split(","), emulated_bf16()
    for prec in asked:
        if prec not in PRECISIONS:
            sys.exit(f"--precision {prec}: not one of {', '.join(PRECISIONS)}")
        if prec == "bf16" and why and asked != ["bf16"]:
            print(f"bf16 comparison skipped: {why}; `--precision bf16` measures it anyway")
            continue
        default = METHODS if prec != "bf16" else EQUAL_BF16
        methods = args.methods.split(",") if args.methods else default
        result = comparison(prec, methods, args, out)
        (out / f"bench-{prec}.json").write_text(json.dumps(result, indent=2))
        day = result["date"][:10]  # the committed copy, as every bench keeps its results
        (HERE / "results" / f"bench-{prec}-{day}.json").write_text(json.dumps(result, indent=2))
        write_results(HERE / "RESULTS.md", prec, results_md(result))
        print(f"\nwrote {HERE / 'RESULTS.md'}")


def machine() -> str:
    """The machine in one line, as every bench's result file names it."""
    from tunelab.measure import cpu_model
    from tunelab.precision import cpu_bf16_flag

    return (
        f"{cpu_model()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, native bf16: {cpu_bf16_flag() or 'no'}"
    )


def emulated_bf16() -> str | None:
    """Why bf16 autocast here would be emulated arithmetic (None where it is native)."""
    from tunelab.precision import cpu_bf16_flag

    if torch.cuda.is_available() or cpu_bf16_flag():
        return None
    return "this CPU has no native bf16 (no AMX or AVX512-BF16) and there is no GPU"


def comparison(prec: str, methods: list[str], args, out: Path) -> dict:
    """Every method through both sides in ``prec``; then, at the defaults or fp32, the
    end-to-end four-method comparison."""
    from tunelab.methods import build_method

    rows = []
    for i, method in enumerate(methods):
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
            "mfu_tunelab": fpt * tl["tokens_per_s"] / peak_flops(tl["precision"]),
            "mfu_hf": fpt * hf["tokens_per_s"] / peak_flops(hf["precision"]),
        }
        rows.append(row)
        print(
            f"{prec} {method:7s} tunelab {tl['examples_per_s']:6.1f} ex/s ({tl['precision']})  "
            f"hf {hf['examples_per_s']:6.1f} ex/s ({hf['precision']})  x{row['speedup']:.2f} "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f})  "
            f"acc {100 * tl['test_accuracy']:.2f} vs {100 * hf['test_accuracy']:.2f}",
            flush=True,
        )
    e2e = None
    if prec != "bf16" and not args.skip_e2e and all(m in methods for m in ARTICLE):
        e2e = end_to_end(prec, rows, args, out)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": machine(),
        "packages": {
            p: metadata.version(p)
            for p in ("torch", "transformers", "peft", "accelerate", "datasets")
        },
        "train_examples": args.train_examples,
        "precision": prec,
        "rounds": args.rounds,
        "peak_flops": {
            p: peak_flops(p)
            for r in rows
            for p in (r["tunelab"]["precision"], r["hf"]["precision"])
        },
        "rows": rows,
        "e2e": e2e,
    }


def end_to_end(prec: str, rows: list[dict], args, out: Path) -> dict:
    """One `tunelab compare` process of the article's four methods against the four plain
    recipe processes of ``rows``."""
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
            f"train.mixed_precision={PRECISIONS[prec][0]}",
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
    return e2e


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


TITLES = {
    "defaults": "each side at its own defaults (tunelab `train.mixed_precision=auto`, "
    "the Trainer's `bf16=False`)",
    "bf16": "both sides under bf16 autocast",
    "fp32": "both sides in full precision",
}
TARGETS = {"defaults": 2.0, "bf16": 1.3}  # issue 22, geometric mean over full, lora, prompt


def results_md(r: dict) -> str:
    geo = geomean([x["speedup"] for x in r["rows"]])
    prec = r["precision"]
    sides = sorted({x[s]["precision"] for x in r["rows"] for s in ("tunelab", "hf")})
    peaks = ", ".join(f"{p} {r['peak_flops'][p] / 1e9:.1f} GFLOP/s" for p in sides)
    lines = [
        f"### {prec}: {TITLES[prec]}",
        "",
        f"Measured {r['date']} on {r['machine']}; "
        + ", ".join(f"{k} {v}" for k, v in r["packages"].items())
        + ".",
        f"MiniLM-L6 on {r['train_examples']} Rotten Tomatoes training snippets, batch 32, "
        "1 epoch, max length 128, seed 0, each method at its own default lr (the same on both "
        f"sides). Matmul peak of this machine (the precision each side ran in): {peaks}.",
        "",
        f"Examples/s: mean over {r['rounds']} alternating rounds per side; speedup "
        "range: the ratio within each round.",
        "",
        "| method | lr | precision (tunelab / HF) | tunelab ex/s | HF ex/s | speedup | range | "
        "tunelab tok/s | HF tok/s | tunelab MFU | HF MFU | tunelab test acc | HF test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        tl, hf = x["tunelab"], x["hf"]
        lo, hi = x["speedup_range"]
        lines.append(
            f"| {x['method']} | {x['lr']:g} | {tl['precision']} / {hf['precision']} | "
            f"{tl['examples_per_s']:.1f} | "
            f"{hf['examples_per_s']:.1f} | {x['speedup']:.2f}x | "
            f"{lo:.2f}-{hi:.2f} | {tl['tokens_per_s']:.0f} | "
            f"{hf['tokens_per_s']:.0f} | {100 * x['mfu_tunelab']:.0f}% | "
            f"{100 * x['mfu_hf']:.0f}% | {100 * tl['test_accuracy']:.2f} | "
            f"{100 * hf['test_accuracy']:.2f} |"
        )
    lines += ["", f"Geometric mean speedup: {geo:.2f}x."]
    three = [x["speedup"] for x in r["rows"] if x["method"] in EQUAL_BF16]
    if prec in TARGETS and len(three) == len(EQUAL_BF16):
        g = geomean(three)
        verdict = "met" if g >= TARGETS[prec] else "missed"
        lines.append(
            f"Over full, lora and prompt: {g:.2f}x (target >= {TARGETS[prec]}x: {verdict})."
        )
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
        "`tunelab.measure.flops_per_token`) x real tokens/s / the matmul peak in the side's "
        "precision.",
    ]
    return "\n".join(lines)


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


if __name__ == "__main__":
    main()
