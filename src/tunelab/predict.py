"""Use a finished run: load its saved model or adapter, classify or generate, export a plain
Hugging Face folder with adapters merged."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tunelab.config import RunConfig, load_config
from tunelab.errors import TunelabError
from tunelab.models import WEIGHTS_DTYPE


def run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise TunelabError(f"{str(run_dir)!r} is not a run folder (no config.yaml)")
    return load_config(path)


def load_run_model(run_dir: str | Path):
    """(model, tokenizer) from ``RUN_DIR/model``: a PEFT adapter or a full HF model, with a
    classification head or (task=causal-lm) its language-model head."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    folder = Path(run_dir) / "model"
    if not (folder / "config.json").exists():
        raise TunelabError(
            f"{str(run_dir)!r} holds no saved model (expected {folder}/config.json);"
            f" is it a finished run folder with train.save_model=true?"
        )
    causal = run_config(run_dir).task == "causal-lm"
    auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    tok = AutoTokenizer.from_pretrained(folder)
    if (folder / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        base_path = PeftConfig.from_pretrained(folder).base_model_name_or_path
        config = AutoConfig.from_pretrained(folder)  # carries num_labels and id2label
        try:
            base = auto.from_pretrained(base_path, config=config, dtype=WEIGHTS_DTYPE)
        except Exception as e:
            raise TunelabError(
                f"cannot load the adapter's base model {base_path!r}: "
                f"{str(e).splitlines()[0][:200]}"
            ) from None
        model = PeftModel.from_pretrained(base, folder)
    else:
        model = auto.from_pretrained(folder, dtype=WEIGHTS_DTYPE)
    return model.eval(), tok


@torch.inference_mode()
def predict(run_dir: str | Path, texts: list[str], max_new_tokens: int = 0) -> list[dict]:
    """Label and score per text; for a causal-LM run, the probability of every label word
    (and, with ``max_new_tokens``, the model's own greedy continuation of the prompt)."""
    cfg = run_config(run_dir)
    model, tok = load_run_model(run_dir)
    if cfg.task == "causal-lm" and cfg.data.response_column:
        return _generate(model, tok, texts, max_new_tokens or 64)
    if cfg.task == "causal-lm":
        return _predict_words(cfg, model, tok, texts, max_new_tokens)
    enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    probs = model(**enc).logits.softmax(-1)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    id2label = base.config.id2label
    out = []
    for text, p in zip(texts, probs, strict=True):
        i = int(p.argmax())
        out.append({"text": text, "label": id2label[i], "score": float(p[i])})
    return out


def _predict_words(cfg: RunConfig, model, tok, texts, max_new_tokens: int) -> list[dict]:
    from tunelab.data import Split
    from tunelab.tasks import build_task
    from tunelab.tasks.instruction import respond

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = [base.config.id2label[i] for i in sorted(base.config.id2label)]  # saved by the run
    task = build_task(cfg, labels)
    enc = task.encode(Split(list(texts), None, [0] * len(texts)), tok, cfg.data.max_length)
    batch = task.collate(enc, list(range(len(texts))), tok.pad_token_id or 0)
    probs = task.score(model, batch).softmax(-1)
    out = []
    for i, text in enumerate(texts):
        k = int(probs[i].argmax())
        row = {
            "text": text,
            "label": task.label_names[k],
            "score": float(probs[i, k]),
            "words": {w: float(p) for w, p in zip(task.label_words, probs[i], strict=True)},
        }
        if max_new_tokens:
            prompt = enc.input_ids[i][: enc.prompt_lengths[i]]
            row["generated"] = respond(model, tok, prompt, max_new_tokens)
        out.append(row)
    return out


def _generate(model, tok, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """Instruction runs: the model's greedy response to each prompt (its chat template)."""
    from tunelab.tasks.instruction import Instruction, respond

    task = Instruction([])
    return [
        {"prompt": p, "response": respond(model, tok, task.prompt_ids(tok, p), max_new_tokens)}
        for p in prompts
    ]


def export(run_dir: str | Path, out: str | Path) -> Path:
    """A standalone HF folder (safetensors + tokenizer) that plain transformers loads with no
    peft: LoRA / IA3 adapters merged into the base weights, a full model copied."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TunelabError(f"export folder {str(out)!r} is not empty; pick a new one")
    folder = Path(run_dir) / "model"
    model, tok = load_run_model(run_dir)
    if (folder / "adapter_config.json").exists():
        if (
            not hasattr(model, "merge_and_unload")
            or model.peft_config["default"].is_prompt_learning
        ):
            raise TunelabError(
                "this run trained virtual tokens (prompt/prefix tuning): there are no weights to "
                "merge into the model; load it with peft (PeftModel.from_pretrained)"
            )
        model = model.merge_and_unload()
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    else:
        shutil.copytree(folder, out, dirs_exist_ok=True)
    return out
