"""Load a finished run's saved model or adapter and classify texts."""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.errors import TunelabError


def load_run_model(run_dir: str | Path):
    """(model, tokenizer) from ``RUN_DIR/model``: a PEFT adapter or a full HF model."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(run_dir) / "model"
    if not (folder / "config.json").exists():
        raise TunelabError(
            f"{str(run_dir)!r} holds no saved model (expected {folder}/config.json);"
            f" is it a finished run folder?"
        )
    tok = AutoTokenizer.from_pretrained(folder)
    if (folder / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        base_path = PeftConfig.from_pretrained(folder).base_model_name_or_path
        config = AutoConfig.from_pretrained(folder)  # carries num_labels and id2label
        try:
            base = AutoModelForSequenceClassification.from_pretrained(base_path, config=config)
        except Exception as e:
            raise TunelabError(
                f"cannot load the adapter's base model {base_path!r}: "
                f"{str(e).splitlines()[0][:200]}"
            ) from None
        model = PeftModel.from_pretrained(base, folder)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder)
    return model.eval(), tok


@torch.inference_mode()
def predict(run_dir: str | Path, texts: list[str]) -> list[dict]:
    model, tok = load_run_model(run_dir)
    enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    probs = model(**enc).logits.softmax(-1)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    id2label = base.config.id2label
    out = []
    for text, p in zip(texts, probs, strict=True):
        i = int(p.argmax())
        out.append({"text": text, "label": id2label[i], "score": float(p[i])})
    return out
