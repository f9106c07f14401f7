"""Every method on SmolLM2 at one budget, with forgetting: the learning / forgetting table.

SmolLM2-135M-Instruct (built in) continues "Review: {text}\\nSentiment:" with a label word
(classification as text) on the built-in reviews: 320 training snippets, one epoch at batch 16,
200 validation and 200 test snippets; every method the model takes, at its own default
learning rate; forgetting on 200 passages of the built-in general text (tunelab.forgetting).
Writes bench/results/forgetting-<date>.json (machine named); docs/decoders.md renders it.

``--sft``: the same methods and budget on supervised fine-tuning instead (task=causal-lm with
instruction data): the model learns to write the reviews themselves ("Write a positive movie
review snippet:" -> the snippet), scored by its test loss on the responses (and perplexity);
written to bench/results/forgetting-sft-<date>.json.

    python bench/forgetting_table.py        # ~30-60 min on 2 CPU cores
    python bench/forgetting_table.py --sft
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

SETUP = ["data.max_train_examples=320", "data.max_eval_examples=200", "train.epochs=1",
         "train.batch_size=16", "forgetting.examples=200"]  # fmt: skip


def sft_data(folder: Path) -> str:
    """The built-in reviews as instruction data: a prompt naming the sentiment, the snippet
    as the response (a .jsonl tunelab reads with data.response_column=response)."""
    from tunelab.data import _rotten_tomatoes

    split, names = _rotten_tomatoes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reviews-sft.jsonl"
    rows = [{"prompt": f"Write a {names[y]} movie review snippet:", "response": t}
            for t, y in zip(split.texts, split.labels, strict=True)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def methods() -> str:
    """Every method the model takes (the others are refused up front, with the reason)."""
    from tunelab.config import for_method, load_config
    from tunelab.errors import TunelabError
    from tunelab.methods import METHODS
    from tunelab.planning.trace import refuse_early

    base, ok = load_config(str(ROOT / "configs" / "decoder-demo.yaml"), SETUP), []
    for m in METHODS:
        try:
            refuse_early(for_method(base, m, {}))
            ok.append(m)
        except TunelabError as e:
            print(f"{m}: refused: {e}")
    return ",".join(ok)


def main() -> None:
    from demo import machine

    import tunelab

    sft = "--sft" in sys.argv
    out = ROOT / "runs" / ("forgetting-sft" if sft else "forgetting")
    setup = SETUP + ([f"data.dataset={sft_data(out.parent)}", "data.response_column=response"]
                     if sft else [])  # fmt: skip
    t0 = time.perf_counter()
    names = methods()
    cmp = tunelab.compare(names, *setup, config="configs/decoder-demo.yaml", out=str(out),
                          overwrite=True, report=True)  # fmt: skip
    wall = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    rows = []
    for r in cmp.records:
        f = r.forgetting
        rows.append({
            "method": r.method, "status": r.status, "reason": r.reason[:200],
            "trainable": r.params.trainable if r.ok else None,
            "test_accuracy": r.test.accuracy if r.ok and r.test else None,
            "test_loss": r.test.loss if r.ok and r.test else None,
            "test_perplexity": r.test.perplexity if r.ok and r.test else None,
            "test_examples": r.data.test,
            "forgetting": f.change if f else None, "low": f.low if f else None,
            "high": f.high if f else None, "before": f.before if f else None,
            "passages": f.passages if f else 0, "train_s": r.timing.train_s if r.ok else None,
        })  # fmt: skip
    result = {
        "bench": "forgetting", "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "commit": commit, "machine": machine(), "precision": cmp.records[0].env.precision,
        "task": "sft" if sft else "classification as text",
        "command": f"tunelab compare --config configs/decoder-demo.yaml --methods {names} "
        + " ".join(setup).replace(str(ROOT) + "/", ""), "wall_s": wall, "rows": rows,
        "verdicts": cmp.analysis.verdicts,
        "failed": [f"{r.method}: {r.reason[:200]}" for r in cmp.failed],
    }  # fmt: skip
    kind = "forgetting-sft" if sft else "forgetting"
    path = HERE / "results" / f"{kind}-{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(rows, indent=1))
    print(f"written: {path}")


def render(r: dict) -> str:
    """The docs' table: each method's test accuracy (95% Wilson interval over the test
    snippets), forgetting (95% interval over the passages) and trainable parameters."""
    from tunelab.report.stats import binomial

    sft = r.get("task") == "sft"
    lines = [
        f"Every method SmolLM2-135M-Instruct takes, one budget ({r['command']}; "
        f"{r['precision']}; {r['wall_s'] / 60:.0f} min in all):",
        "",
        f"| method | trainable | {'test loss (perplexity)' if sft else 'test accuracy %'} | "
        "forgetting (nats/token) | train s |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [x for x in r["rows"] if x["status"] == "ok"]
    for x in sorted(rows, key=lambda x: x["forgetting"]):
        if sft:  # the loss of the test responses (no interval: one seed)
            score = f"{x['test_loss']:.3f} ({x['test_perplexity']:.1f})"
        else:
            acc = binomial(100 * x["test_accuracy"], x["test_examples"])  # in %
            score = f"{acc.mean:.1f} [{acc.low:.1f}, {acc.high:.1f}]"
        lines.append(
            f"| {x['method']} | {x['trainable']:,} | {score} | {x['forgetting']:+.4f} "
            f"[{x['low']:+.4f}, {x['high']:+.4f}] | {x['train_s']:.0f} |"
        )
    for x in r["rows"]:
        if x["status"] != "ok":
            lines.append(f"| {x['method']} | {x['status']}: {x['reason'][:80]} | | | |")
    base = next((x["before"] for x in rows if x["before"] is not None), None)
    if base is not None:
        lines += ["", f"The base model's loss on the general-text sample: {base:.3f} nats/token "
                  f"({rows[0]['passages']} passages)."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
