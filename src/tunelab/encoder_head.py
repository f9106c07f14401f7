"""An encoder's own masked-LM head, for forgetting (tunelab.forgetting): whether the checkpoint
has one, and the masked-LM loss of the general-text passages with it, reading the base
backbone or a trained one.

The head is the checkpoint's (bert-base-uncased's ``cls``, RoBERTa's ``lm_head``, DistilBERT's
``vocab_*``): found by the names of its weights in the checkpoint's safetensors header, without
loading anything. To score a trained classifier, the base masked-LM model runs with its
backbone's output replaced by the classifier's last hidden states (a forward hook), so
adapters, prompts and every other method are scored as they train: the pretraining head over the
trained backbone (a decoder tied to the word embeddings reads the trained ones, as loading the
trained weights into the masked-LM class would), how far the backbone moved from what its own
pretraining head reads.
"""

from __future__ import annotations

import json
import random

import torch

MASK_RATE = 0.15  # BERT's; every chosen token becomes the mask token (no 80/10/10 draw)
NO_HEAD = (
    "the model has no language-model head (a classification head scores labels, not text): "
    "forgetting is measured for decoders trained as language models and for encoders whose "
    "checkpoint has a masked-LM head"
)


def missing(cfg, model, tokenizer) -> str:
    """Why forgetting cannot be measured for this classifier ("" when its checkpoint has a
    masked-LM head and its tokenizer a mask token)."""
    from tunelab.models import unwrap

    if tokenizer.mask_token_id is None:
        return f"{NO_HEAD} (the tokenizer has no mask token)"
    return head_missing(cfg.model.name, unwrap(model).config)


def head_missing(name: str, config) -> str:
    """Why checkpoint ``name`` (its ``config``) has no masked-LM head to score with ("" if
    it has one)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or config.is_encoder_decoder:
        return NO_HEAD
    keys = checkpoint_keys(name)
    if keys is None:
        return f"{NO_HEAD} (no safetensors weights to look for a masked-LM head in)"
    absent = [c for c, names in head_parameters(config).items()
              if not any(f"{c}.{n}" in keys for n in names)]  # fmt: skip
    if absent:
        return (f"{NO_HEAD}: this checkpoint has no masked-LM head (no {', '.join(absent)} "
                f"weights; e.g. a sentence-transformers encoder)")  # fmt: skip
    return ""


def checkpoint_keys(name: str) -> set[str] | None:
    """The weight names of a checkpoint (local folder or Hub id), from its safetensors index
    or header; None when it has no safetensors file."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    from tunelab.models import resolve

    where = resolve(name)
    opts = {"_raise_exceptions_for_missing_entries": False,
            "_raise_exceptions_for_connection_errors": False}  # fmt: skip
    index = cached_file(where, "model.safetensors.index.json", **opts)
    if index:
        with open(index, encoding="utf-8") as f:
            return set(json.load(f)["weight_map"])
    single = cached_file(where, "model.safetensors", **opts)
    if not single:
        return None
    with safe_open(single, "pt") as f:
        return set(f.keys())


def head_parameters(config) -> dict[str, list[str]]:
    """The masked-LM class's modules beside the backbone and their parameter names (built on
    the meta device: no memory, no weights)."""
    from transformers import AutoModelForMaskedLM

    with torch.device("meta"):
        mlm = AutoModelForMaskedLM.from_config(config)
    prefix = mlm.base_model_prefix
    return {c: [n for n, _ in m.named_parameters()] for c, m in mlm.named_children()
            if c != prefix and any(True for _ in m.parameters())}  # fmt: skip


def masked(chunk: list[int], tokenizer, seed: int, special=None) -> tuple[list[int], list[int]]:
    """A passage with its special tokens (``special``: ``around(tokenizer)``, found once by a
    caller that masks many) and 15% of its tokens (at least one, a seeded draw: the same
    before and after) replaced by the mask token: (input ids, labels; -100 where nothing is
    scored)."""
    before, after = special or around(tokenizer)
    ids, start = before + list(chunk) + after, len(before)
    picked = random.Random(seed).sample(range(len(chunk)), max(1, round(MASK_RATE * len(chunk))))
    labels = [-100] * len(ids)
    for p in picked:
        labels[start + p], ids[start + p] = ids[start + p], tokenizer.mask_token_id
    return ids, labels


def around(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] / [SEP], <s> /
    </s>): found by encoding one word with and without them."""
    with_ = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    for i in range(len(with_) - len(bare) + 1):
        if with_[i : i + len(bare)] == bare:
            return with_[:i], with_[i + len(bare) :]
    return [], []


@torch.no_grad()
def losses(cfg, trained, chunks, tokenizer, device, precision: str) -> list[float]:
    """Each passage's mean cross-entropy (nats) over its masked tokens, by the checkpoint's
    masked-LM head reading the base backbone (``trained`` None) or ``trained``'s last hidden
    states, in the run's precision."""
    from transformers import AutoModelForMaskedLM

    from tunelab.models import safe_load
    from tunelab.precision import autocast

    mc = cfg.model
    mlm = safe_load(AutoModelForMaskedLM, mc.name, mc.trust_remote_code, mc.allow_pickle)
    mlm.to(device).eval()
    now: dict[str, torch.Tensor] = {}

    def swap(module, args, output):  # the trained backbone's output, where the base's was
        output["last_hidden_state"] = now["h"].to(output["last_hidden_state"].dtype)
        return output

    hook = mlm.base_model.register_forward_hook(swap) if trained is not None else None
    head = mlm.get_output_embeddings()
    if (
        trained is not None
        and head is not None
        and head.weight is mlm.get_input_embeddings().weight
    ):
        head.weight = trained.get_input_embeddings().weight  # tied: the trained embeddings
    was = trained.training if trained is not None else False
    if trained is not None:
        trained.eval()
    out, pad = [], tokenizer.pad_token_id or 0
    try:
        special = around(tokenizer)
        items = [masked(c, tokenizer, seed=i, special=special) for i, c in enumerate(chunks)]
        for i in range(0, len(items), 8):
            part = items[i : i + 8]
            width = max(len(x) for x, _ in part)
            ids = torch.full((len(part), width), pad, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            mask = torch.zeros_like(ids)
            for j, (x, y) in enumerate(part):
                ids[j, : len(x)], labels[j, : len(y)], mask[j, : len(x)] = (
                    torch.tensor(x), torch.tensor(y), 1)  # fmt: skip
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            with autocast(precision, device):
                if trained is not None:
                    states = trained(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                    now["h"] = states.hidden_states[-1][:, -width:]  # after virtual tokens
                logits = mlm(input_ids=ids, attention_mask=mask).logits
            nll = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), labels, reduction="none", ignore_index=-100
            )
            scored = (labels != -100).float()
            out += ((nll * scored).sum(1) / scored.sum(1).clamp(min=1)).tolist()
    finally:
        if hook is not None:
            hook.remove()
        if trained is not None:
            trained.train(was)
        del mlm
    return out
