"""Sequence classification: a head on the text, cross-entropy, accuracy and macro-F1."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from tunelab import batches as B
from tunelab import data as D


@dataclass
class Classification:
    label_names: list[str]
    lm_head = False  # a fresh classification head on the backbone
    zero_shot = False  # an untrained head is chance: the majority class is the floor
    has_accuracy = True
    selection = None  # train.metric picks the best validation
    template = None  # the text as it is (CausalLM fills a prompt)

    @classmethod
    def from_config(cls, cfg, label_names: list[str]) -> Classification:
        return cls(label_names)

    def encode(self, split: D.Split, tokenizer, max_length: int) -> B.Encoded:
        return B.encode(split, tokenizer, max_length)

    def collate(self, data: B.Encoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        return B.collate(data, idx, pad_id)

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["labels"]

    def forward(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy of the batch (the model's head computes it from ``labels``) and
        the predicted class of each example."""
        out = model(**batch)
        return out.loss, out.logits.argmax(-1)

    def metrics(self, preds: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Accuracy and macro-F1 (mean over classes of 2PR/(P+R), 0 for a class never hit)."""
        acc = (preds == labels).float().mean().item()
        f1s = []
        for c in range(len(self.label_names)):
            tp = ((preds == c) & (labels == c)).sum().item()
            fp = ((preds == c) & (labels != c)).sum().item()
            fn = ((preds != c) & (labels == c)).sum().item()
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        return {"accuracy": acc, "macro_f1": sum(f1s) / len(self.label_names)}

    def samples(self, model, data: B.Encoded, tokenizer) -> list[dict[str, str]]:
        return []  # nothing to generate: the predictions are labels

    def baseline(self, train_labels: list[int], labels: list[int]) -> dict[str, float]:
        """Metrics of always predicting the most frequent training label (ties: lowest id)."""
        majority = min(Counter(train_labels).most_common(), key=lambda kv: (-kv[1], kv[0]))[0]
        target = torch.tensor(labels)
        return self.metrics(torch.full_like(target, majority), target)
