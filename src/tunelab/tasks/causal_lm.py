"""Classification as text for a decoder: each example becomes ``data.template`` filled with its
text, and the model learns to continue it with its label word (loss on the answer tokens only).
Predictions score every label word by its log-likelihood after the prompt, length-normalised
for multi-token words: the way lm-eval-harness scores multiple choice. Accuracy and macro-F1
then compare with any classifier's on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tunelab import data as D
from tunelab.errors import ConfigError, DataError
from tunelab.tasks.classification import Classification


@dataclass
class TextEncoded(D.Encoded):
    """Prompt + answer token ids per example, with where each prompt ends."""

    prompt_lengths: list[int] = field(default_factory=list)


@dataclass
class CausalLM(Classification):
    template: str = "Review: {text}\nSentiment:"
    label_words: list[str] | None = None
    lm_head = True  # the model keeps its language-model head (no classifier)
    zero_shot = True  # the untrained model's label-word accuracy is a baseline to beat
    word_ids: list[list[int]] = field(default_factory=list)

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
        """Answer-token loss, and the label predicted by label-word likelihood: from this very
        forward when every word is one token, else (evaluation) by scoring each word."""
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
        one_token = all(len(w) == 1 for w in self.word_ids)
        if one_token or model.training:
            # peft prompt tuning prepends virtual tokens: logits are longer than the ids
            offset = out.logits.shape[1] - batch["input_ids"].shape[1]
            pos = offset + batch["prompt_len"] - 1
            first = torch.tensor([w[0] for w in self.word_ids], device=pos.device)
            picked = out.logits[torch.arange(len(pos), device=pos.device), pos][:, first]
            return out.loss, picked.argmax(-1)
        return out.loss, self.score(model, batch).argmax(-1)

    @torch.no_grad()
    def score(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[batch, labels] mean log-probability of each label word's tokens after the prompt."""
        ids, starts = batch["input_ids"], batch["prompt_len"]
        scores = []
        for word in self.word_ids:
            rows = [ids[i, : starts[i]].tolist() + word for i in range(len(ids))]
            width = max(map(len, rows))
            x = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=ids.device)
            mask = torch.tensor(
                [[1] * len(r) + [0] * (width - len(r)) for r in rows], device=ids.device
            )
            logp = model(input_ids=x, attention_mask=mask).logits.float().log_softmax(-1)
            offset = logp.shape[1] - width
            total = torch.zeros(len(ids), device=ids.device)
            for j, tok in enumerate(word):
                pos = offset + starts + j - 1
                total += logp[torch.arange(len(ids), device=ids.device), pos, tok]
            scores.append(total / len(word))
        return torch.stack(scores, dim=-1)
