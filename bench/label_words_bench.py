"""Label-word scoring at evaluation: tunelab's bounded scorer (tasks/label_words.py) against
the scoring tunelab shipped before it (copied below as `before`: one full forward with the
labels for the loss, then one full forward per label word with a log-softmax over the whole
vocabulary at every position).

The case from issue 18: SmolLM2-135M (built in), five label words of several tokens, inputs
of 256 tokens (real Rotten Tomatoes snippets joined until 256 tokens), one evaluation batch of
64. Each way runs in a fresh process (peak resident memory = that process's ru_maxrss, the
model included); both score the same batch. Writes bench/results/label-words-<date>.json:

    python bench/label_words_bench.py            # both ways, ~8 min on 2 cores
"""

from __future__ import annotations

import datetime
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

WORDS = ["very negative", "rather negative", "mixed or neutral", "rather positive",
         "very positive"]  # fmt: skip
ROWS, LENGTH = 64, 256


def before(model, batch, word_ids):
    """tunelab's evaluation forward for multi-token label words before this change."""
    import torch

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["labels"])  # fmt: skip
    ids, starts = batch["input_ids"], batch["prompt_len"]
    scores = []
    for word in word_ids:
        rows = [ids[i, : starts[i]].tolist() + word for i in range(len(ids))]
        width = max(map(len, rows))
        x = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        logp = model(input_ids=x, attention_mask=mask).logits.float().log_softmax(-1)
        offset = logp.shape[1] - width
        total = torch.zeros(len(ids))
        for j, tok in enumerate(word):
            total += logp[torch.arange(len(ids)), offset + starts + j - 1, tok]
        scores.append(total / len(word))
    return out.loss, torch.stack(scores, dim=-1).argmax(-1)


def one(way: str) -> dict:
    """Score the batch one way in this process; return time, memory and the labels."""
    import torch

    from tunelab.data import Split, _rotten_tomatoes
    from tunelab.models import load_model, load_tokenizer
    from tunelab.tasks.causal_lm import CausalLM

    torch.set_num_threads(2)
    tok = load_tokenizer("smollm2")
    model = load_model("smollm2", WORDS, tok.pad_token_id, lm_head=True).eval()
    split, _ = _rotten_tomatoes()
    texts, i = [], 0
    while len(texts) < ROWS:  # join snippets until a text fills the 256-token budget
        text = ""
        while len(tok(text)["input_ids"]) < LENGTH:
            text, i = text + " " + split.texts[i], i + 1
        texts.append(text.strip())
    task = CausalLM(WORDS, label_words=WORDS)
    task.tokenize_words(tok)
    enc = task.encode(Split(texts, None, [k % 5 for k in range(ROWS)]), tok, LENGTH)
    batch = task.collate(enc, list(range(ROWS)), tok.pad_token_id)
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    with torch.no_grad():
        loss, labels = (
            before(model, batch, task.word_ids) if way == "before" else task.forward(model, batch)
        )
    seconds = time.perf_counter() - t0
    return {
        "way": way,
        "rows": ROWS,
        "tokens_per_row": [len(r) for r in enc.input_ids][:3],
        "word_tokens": [len(w) for w in task.word_ids],
        "seconds": seconds,
        "seconds_per_example": seconds / ROWS,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_loading_bytes": rss_model,
        "loss": float(loss),
        "labels": labels.tolist(),
    }


def plan_eval_peak() -> int:
    """What `tunelab plan` predicts for this evaluation: weights + one batch's working set."""
    from tunelab.models import load_model
    from tunelab.planning import eval_working_set

    model = load_model("smollm2", WORDS, lm_head=True)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + eval_working_set(model.config, "causal-lm", ROWS, LENGTH)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("before", "bounded"):
        print(json.dumps(one(sys.argv[1])))
        return
    rows = {}
    for way in ("bounded", "before"):
        proc = subprocess.run([sys.executable, __file__, way], capture_output=True, text=True)
        if proc.returncode != 0:
            rows[way] = {"way": way, "failed": proc.returncode, "stderr": proc.stderr[-2000:]}
        else:
            rows[way] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(way, {k: v for k, v in rows[way].items() if k != "labels"}, flush=True)
    new, old = rows["bounded"], rows["before"]
    summary = {}
    if "labels" in new and "labels" in old:
        summary = {
            "same_labels": new["labels"] == old["labels"],
            "speedup_per_example": old["seconds_per_example"] / new["seconds_per_example"],
            "peak_rss_gb": {k: r["peak_rss_bytes"] / 1e9 for k, r in rows.items()},
            "loss_difference": abs(new["loss"] - old["loss"]),
            "plan_eval_peak_gb": plan_eval_peak() / 1e9,
        }
    print(json.dumps(summary, indent=1))
    out = Path(__file__).parent / "results" / f"label-words-{datetime.date.today()}.json"
    out.write_text(json.dumps({"case": __doc__.split("\n\n")[1], "summary": summary,
                               "runs": rows}, indent=1))  # fmt: skip
    print(f"-> {out}")


if __name__ == "__main__":
    main()
