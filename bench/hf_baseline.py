"""The plain recipe tunelab is measured against: Hugging Face `Trainer` (+ peft), written the
way a careful user would (dynamic padding, length-grouped sampling, validation at each epoch
end as the article advises, then the test set). Same data split, model, method setup,
hyperparameters and evaluation batch size as the tunelab run. Training time excludes the
validation passes, as tunelab's does.

Usage: python bench/hf_baseline.py METHOD N_TRAIN LR OUT.json [fp32|bf16]
"""

from __future__ import annotations

import json
import sys
import time

T0 = time.perf_counter()  # end-to-end wall clock starts before the heavy imports

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging  # noqa: E402

from tunelab.config import DataConfig  # noqa: E402
from tunelab.data import load_splits  # noqa: E402
from tunelab.methods import build_method  # noqa: E402
from tunelab.models import load_model, load_tokenizer  # noqa: E402

BATCH, EVAL_BATCH, EPOCHS, MAX_LEN, SEED = 32, 64, 1, 128, 0


class TimedTrainer(Trainer):
    """Trainer that keeps the seconds spent in evaluation, to subtract from training time."""

    eval_s = 0.0

    def evaluate(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.eval_s += time.perf_counter() - t


def main(method_name: str, n_train: int, lr: float, out: str, precision: str = "fp32") -> None:
    logging.set_verbosity_error()
    splits = load_splits(DataConfig(max_train_examples=n_train))
    tok = load_tokenizer("minilm")

    def to_ds(split):
        ds = Dataset.from_dict({"text": split.texts, "label": split.labels})
        return ds.map(
            lambda b: tok(b["text"], truncation=True, max_length=MAX_LEN),
            batched=True,
            remove_columns=["text"],
        )

    train, val, test = to_ds(splits.train), to_ds(splits.validation), to_ds(splits.test)
    # seed before the head and the method's new weights are initialised, as tunelab does
    # (Trainer seeds only at its own construction, after the model exists)
    set_seed(SEED)
    model = load_model("minilm", splits.label_names, tok.pad_token_id)
    method = build_method({"name": method_name})
    model = method.prepare(model)
    # The Trainer's own default optimizer (transformers 5.24 + torch >= 2.8:
    # adamw_torch_fused, its decay split) for every method but LLRD, whose per-layer learning
    # rates need tunelab's parameter groups: those go to the same fused AdamW.
    optimizers = (None, None)
    if method_name == "llrd":
        from torch.optim import AdamW

        optimizers = (AdamW(method.param_groups(model, lr, 0.01), lr=lr, fused=True), None)
    args = TrainingArguments(
        output_dir="/tmp/hf-baseline",
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=EVAL_BATCH,
        learning_rate=lr,
        num_train_epochs=EPOCHS,
        weight_decay=0.01,
        warmup_steps=0.06,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=20,
        report_to="none",
        disable_tqdm=True,
        seed=SEED,
        bf16=precision == "bf16",  # autocast, on CPU too (with use_cpu)
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = TimedTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=DataCollatorWithPadding(tok),
        optimizers=optimizers,
    )
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t - trainer.eval_s
    pred = trainer.predict(test)
    # transformers 5 applies group_by_length to evaluation too: predictions come back in
    # length order, so score them against pred.label_ids, never against the split's order
    acc = float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())
    tokens = sum(len(x) for x in train["input_ids"]) * EPOCHS
    result = {
        "method": method_name,
        "train_s": train_s,
        "examples": len(train) * EPOCHS,
        "examples_per_s": len(train) * EPOCHS / train_s,
        "tokens_per_s": tokens / train_s,
        "test_accuracy": acc,
        "eval_s": trainer.eval_s,
        "wall_s": time.perf_counter() - T0,
    }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], *sys.argv[5:6])
