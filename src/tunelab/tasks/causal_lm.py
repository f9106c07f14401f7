"""Classification as text for a decoder: each example becomes ``data.template`` filled with its
text, and the model learns to continue it with its label word (loss on the answer tokens only).
Predictions score every label word by its log-likelihood after the prompt, length-normalised
for multi-token words: the way lm-eval-harness scores multiple choice. Accuracy and macro-F1
then compare with any classifier's on the same data.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tunelab import batches as B
from tunelab import data as D
from tunelab.anatomy import unwrap
from tunelab.errors import ConfigError, DataError
from tunelab.tasks.classification import Classification
from tunelab.tasks.label_words import word_logprobs


@dataclass
class TextEncoded(B.Encoded):
    """Prompt + answer token ids per example, with where each prompt ends."""

    prompt_lengths: list[int] = field(default_factory=list)


@dataclass
class CausalLM(Classification):
    template: str = "Review: {text}\nSentiment:"
    label_words: list[str] | None = None
    lm_head = True  # the model keeps its language-model head (no classifier)
    zero_shot = True  # the untrained model's label-word accuracy is a baseline to beat
    word_ids: list[list[int]] = field(default_factory=list)
    head_on_labels: bool = True
    """Training forward: the LM head on the answer positions only (``forward_labelled``) where
    the model can (``keeps_logits``); False computes it everywhere (the bench's reference)."""

    @classmethod
    def from_config(cls, cfg, label_names: list[str]) -> CausalLM:
        return cls(label_names, cfg.data.template, cfg.data.label_words)

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise ConfigError(
                f"data.template must contain {{text}} (where each example goes), got "
                f"{self.template!r}"
            )
        self.label_words = list(self.label_words or self.label_names)
        if len(self.label_words) != len(self.label_names):
            raise ConfigError(
                f"data.label_words has {len(self.label_words)} words for "
                f"{len(self.label_names)} labels ({', '.join(self.label_names)})"
            )

    def tokenize_words(self, tokenizer) -> list[list[int]]:
        """Token ids of each label word as it follows the prompt (with a leading space)."""
        ids = [
            tokenizer(" " + w.strip(), add_special_tokens=False)["input_ids"]
            for w in self.label_words
        ]
        empty = [w for w, i in zip(self.label_words, ids, strict=True) if not w.strip() or not i]
        if empty:
            raise ConfigError(f"data.label_words: {empty[0]!r} tokenizes to nothing; use a word")
        if len({tuple(i) for i in ids}) < len(ids):
            raise ConfigError(
                "data.label_words: two label words tokenize the same; make them differ"
            )
        self.word_ids = ids
        return ids

    def prompts(self, split: D.Split, tokenizer, max_length: int) -> list[list[int]]:
        """Prompt ids per example; the text is cut so prompt + longest answer fit max_length."""
        prefix, suffix = self.template.split("{text}", 1)
        pre = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        if tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [
            tokenizer.bos_token_id
        ]:
            pre = [tokenizer.bos_token_id] + pre  # as the model saw text in pretraining
        pairs = split.pairs or [""] * len(split)
        suffixes = [suffix.replace("{text_pair}", p) for p in pairs]
        suf = tokenizer(suffixes, add_special_tokens=False)["input_ids"]
        longest = max(len(w) for w in self.word_ids)
        budget = max_length - len(pre) - max(map(len, suf)) - longest
        if budget < 1:
            raise DataError(
                f"data.max_length={max_length} leaves no room for the text in data.template"
            )
        texts = tokenizer(split.texts, add_special_tokens=False, truncation=True, max_length=budget)
        return [pre + t + s for t, s in zip(texts["input_ids"], suf, strict=True)]

    def encode(self, split: D.Split, tokenizer, max_length: int) -> TextEncoded:
        words = self.word_ids or self.tokenize_words(tokenizer)
        prompts = self.prompts(split, tokenizer, max_length)
        ids = [p + words[y] for p, y in zip(prompts, split.labels, strict=True)]
        return TextEncoded(ids, None, list(split.labels), [len(p) for p in prompts])

    def collate(self, data: TextEncoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        """Right-padded ids; token labels -100 everywhere but on the answer."""
        rows = [data.input_ids[i] for i in idx]
        width = max(len(r) for r in rows)
        starts = [data.prompt_lengths[i] for i in idx]
        labels = [
            [-100] * s + r[s:] + [-100] * (width - len(r))
            for r, s in zip(rows, starts, strict=True)
        ]
        return {
            "input_ids": torch.tensor([r + [pad_id] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "labels": torch.tensor(labels),
            "targets": torch.tensor([data.labels[i] for i in idx]),
            "prompt_len": torch.tensor(starts),
        }

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["targets"]

    def forward(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Answer-token loss, and the label predicted by label-word likelihood. Training: one
        forward (predictions from the first answer token's logits, approximate for
        multi-token words); evaluation: every label word scored exactly (``score``)."""
        if not model.training:
            return self.forward_eval(model, batch)
        if self.head_on_labels and keeps_logits(model):
            return self.forward_labelled(model, batch)
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
        # peft prompt tuning prepends virtual tokens: logits are longer than the ids
        offset = out.logits.shape[1] - batch["input_ids"].shape[1]
        pos = offset + batch["prompt_len"] - 1
        first = torch.tensor([w[0] for w in self.word_ids], device=pos.device)
        picked = out.logits[torch.arange(len(pos), device=pos.device), pos][:, first]
        return out.loss, picked.argmax(-1)

    def score(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(answer-token loss, ``[rows, labels]`` scores): each label word's mean token
        log-probability after the prompt (length-normalised), with a bounded memory
        (``tasks.label_words``); the loss is the true words' mean negative token
        log-probability, as the training forward's loss is."""
        logp = word_logprobs(model, batch["input_ids"], batch["prompt_len"], self.word_ids)
        scores = torch.stack([w.mean(-1) for w in logp], dim=-1)
        true = [logp[int(k)][i] for i, k in enumerate(batch["targets"].tolist())]
        return -torch.cat(true).sum() / sum(len(t) for t in true), scores

    def forward_labelled(self, model, batch: dict[str, torch.Tensor]):
        """The training forward with the LM head on the answer positions only
        (``labelled_loss``); the prediction from each row's first answer position."""
        loss, logits, keep = labelled_loss(model, batch)
        counts = keep.sum(1)
        firsts = counts.cumsum(0) - counts  # each row's first answer position
        words = torch.tensor([w[0] for w in self.word_ids], device=logits.device)
        return loss, logits[firsts][:, words].argmax(-1)

    def forward_eval(self, model, batch: dict[str, torch.Tensor]):
        loss, scores = self.score(model, batch)
        return loss, scores.argmax(-1)


def labelled_loss(model, batch: dict[str, torch.Tensor]):
    """(loss, logits, mask): the LM head and the loss on the labelled positions only (those
    whose next token has a label: the answer, or an SFT response): the model's
    ``logits_to_keep`` mask projects just those hidden states onto the vocabulary, instead
    of every position of every row; the loss is the same mean token cross-entropy in fp32 as
    the model's own. ``logits`` is [labelled positions (row-major), vocabulary]."""
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_to_keep=keep,
    )
    logits = out.logits.float()
    return F.cross_entropy(logits, labels[:, 1:][keep[:, :-1]]), logits, keep


@functools.cache
def _slices_hidden_states(cls: type) -> bool:
    try:
        return "slice_logits_to_keep" in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False


def keeps_logits(model) -> bool:
    """Whether the model's forward projects only the positions a boolean ``logits_to_keep``
    mask selects (transformers' ``slice_logits_to_keep``, in every recent decoder); never for
    a peft prompt-learning model, whose virtual tokens shift the positions."""
    inner = getattr(model, "module", model)  # DDP
    cfg = getattr(inner, "active_peft_config", None)
    if cfg is not None and cfg.is_prompt_learning:
        return False
    return _slices_hidden_states(type(unwrap(inner)))
