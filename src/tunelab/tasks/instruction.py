"""Instruction / free-text data for a decoder: the model learns to write the response after the
prompt (the tokenizer's chat template when it has one), with the loss on the response tokens
only. Quality is validation loss and perplexity; a few greedy generations from fixed
validation prompts are kept at each validation (run record, metrics.jsonl, TensorBoard text).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab import data as D
from tunelab.tasks.causal_lm import CausalLM, TextEncoded, keeps_logits, labelled_loss

SAMPLES, SAMPLE_TOKENS = 3, 32  # generations per validation, tokens each


@dataclass
class Instruction:
    label_names: list[str]
    head_on_labels: bool = True
    """The LM head and the loss on the response positions only (``labelled_loss``) where the
    model can (``keeps_logits``); False computes it everywhere (the reference)."""
    lm_head = True
    zero_shot = True  # the untrained model's loss and perplexity: the baseline to beat
    has_accuracy = False  # nothing to count as a hit: selection and reports use the loss
    selection = "loss"
    template = None  # the tokenizer's chat template, not a data.template

    @classmethod
    def from_config(cls, cfg, label_names: list[str]) -> Instruction:
        return cls(label_names)

    def prompt_ids(self, tokenizer, prompt: str) -> list[int]:
        if not prompt:
            return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        if tokenizer.chat_template:
            out = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            return list(out["input_ids"] if hasattr(out, "keys") else out)
        return tokenizer(prompt + "\n", add_special_tokens=False)["input_ids"]

    def encode(self, split: D.Exchanges, tokenizer, max_length: int) -> TextEncoded:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        prompts = [self.prompt_ids(tokenizer, p)[: max_length // 2] for p in split.prompts]
        answers = tokenizer(list(split.responses), add_special_tokens=False)["input_ids"]
        ids = [(p + a + eos)[:max_length] for p, a in zip(prompts, answers, strict=True)]
        return TextEncoded(ids, None, [0] * len(ids), [len(p) for p in prompts])

    collate = CausalLM.collate

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["targets"]

    def forward(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The response tokens' mean cross-entropy (training and validation alike)."""
        if self.head_on_labels and keeps_logits(model):
            loss = labelled_loss(model, batch)[0]
        else:
            loss = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            ).loss
        return loss, torch.zeros_like(batch["targets"])

    def metrics(self, preds: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return {}  # loss (and perplexity) come from measure.evaluate

    def baseline(self, train_labels: list[int], labels: list[int]) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def samples(self, model, data: TextEncoded, tokenizer) -> list[dict[str, str]]:
        """Greedy continuations of the first validation prompts."""
        was_training = model.training
        model.eval()
        prompts = [
            data.input_ids[i][: data.prompt_lengths[i]] for i in range(min(SAMPLES, len(data)))
        ]
        out = [
            {
                "prompt": tokenizer.decode(p, skip_special_tokens=True),
                "response": respond(model, tokenizer, p, SAMPLE_TOKENS),
            }
            for p in prompts
        ]
        model.train(was_training)
        return out


@torch.no_grad()
def respond(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> str:
    """The model's greedy continuation of a prompt, decoded."""
    x = torch.tensor([prompt_ids], device=next(model.parameters()).device)
    gen = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(gen[0, len(prompt_ids) :], skip_special_tokens=True)
