"""Label-word scoring with a bounded memory (tasks/label_words.py) against the plain way: one
full forward of prompt + word per label word and a log-softmax over the whole vocabulary at
every position (written out here, independently). Same log-probabilities, hence the same
labels, on every decoder family, under LoRA and prompt tuning, for ragged prompts and words of
one to four tokens, and when the rows are split into several cache chunks."""

from __future__ import annotations

import pytest
import torch

from tests.archs import FAMILIES, tiny_config, tokenizer
from tunelab.tasks import label_words

# its expensive fixture is built once: the module stays on one xdist worker
pytestmark = pytest.mark.xdist_group("label_words")


def reference(model, ids, starts, words):
    """Mean log-probability of each word's tokens after each prompt: full forwards."""
    out = []
    for word in words:
        rows = [ids[i, : starts[i]].tolist() + word for i in range(len(ids))]
        width = max(map(len, rows))
        x = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        logp = model(input_ids=x, attention_mask=mask).logits.float().log_softmax(-1)
        offset = logp.shape[1] - width  # prompt tuning's virtual tokens come first
        per_token = [
            logp[torch.arange(len(ids)), offset + starts + j - 1, tok] for j, tok in enumerate(word)
        ]
        out.append(torch.stack(per_token, dim=-1))
    return out


@pytest.fixture(scope="session")  # session: xdist interleaves modules, a module one is rebuilt
def decoder_tok(smollm2_tokenizer):
    return tokenizer("decoder", smollm2_tokenizer)


def batch(tok, n: int = 6):
    texts = ["a fine film", "dull and long, with a plot that never starts", "ok", "loved it"]
    prompts = [tok(f"Review: {texts[i % 4]}\nSentiment:")["input_ids"] for i in range(n)]
    width = max(map(len, prompts))
    ids = torch.tensor([p + [tok.pad_token_id] * (width - len(p)) for p in prompts])
    words = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in
             ("negative", "positive", "mixed feelings overall", "unclear")]  # fmt: skip
    assert sorted(map(len, words))[-1] > 1  # multi-token words are what this checks
    return ids, torch.tensor([len(p) for p in prompts]), words


def wrap(model, how: str):
    import peft

    from tunelab.methods.base import adapter_targets

    if how == "lora":  # every linear layer of the blocks but a mixture of experts' routers
        targets = adapter_targets(model, {}, ["all-linear"], "lora")
        cfg = peft.LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=targets)
        model = peft.get_peft_model(model, cfg)
        for n, p in model.named_parameters():  # LoRA B starts at zero: make it matter
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5)
    elif how == "prompt":
        cfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
        model = peft.get_peft_model(model, cfg)
    return model.eval()


DECODERS = [f for f, (kind, _) in FAMILIES.items() if kind == "decoder"]


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("how", ["plain", "lora", "prompt"])
def test_bounded_scoring_equals_full_forwards(family, how, precision, decoder_tok, monkeypatch):
    """In fp32 the same numbers; under bf16 autocast (as a bf16 run scores) the two ways take
    other products (a cached prefix against one full forward), so they agree to bf16's
    resolution (8 mantissa bits: ~0.4% of a log-probability)."""
    from transformers import AutoModelForCausalLM

    from tunelab.precision import autocast

    torch.manual_seed(0)
    model = wrap(AutoModelForCausalLM.from_config(tiny_config(family, decoder_tok)), how)
    ids, starts, words = batch(decoder_tok)
    with torch.no_grad(), autocast(precision, "cpu"):
        want = reference(model, ids, starts, words)
    # a cache budget of about two rows: three chunks, each with its own cache
    monkeypatch.setattr(label_words, "CACHE_BYTES", 2 * ids.shape[1] * 
                        label_words.cache_bytes_per_token(model))  # fmt: skip
    with autocast(precision, "cpu"):
        got = label_words.word_logprobs(model, ids, starts, words)
    tol = {"atol": 2e-4, "rtol": 1e-4} if precision == "no" else {"atol": 0.05, "rtol": 0.01}
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == torch.float32
        torch.testing.assert_close(g, w, **tol)
    if precision == "no":  # in bf16 near-ties between words may go either way
        stacked = torch.stack([g.mean(-1) for g in got], -1)
        want_labels = torch.stack([w.mean(-1) for w in want], -1).argmax(-1)
        assert torch.equal(stacked.argmax(-1), want_labels)


def test_evaluation_loss_is_the_training_forwards_loss(tiny_llama):
    """The eval path's loss (from the scores) equals the model's own answer-token loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.tasks.causal_lm import CausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    task = CausalLM(["neg", "pos", "mid"], label_words=["negative", "positive", "so so so"])
    task.tokenize_words(tok)
    from tunelab.data import Split

    split = Split(["a fine film", "dull", "long and slow, but fine", "ok"], None, [0, 1, 2, 1])
    enc = task.encode(split, tok, 64)
    b = task.collate(enc, [0, 1, 2, 3], tok.pad_token_id)
    model.train()  # the training forward: HF's own loss over the answer tokens
    with torch.no_grad():
        want, _ = task.forward(model, b)
    model.eval()
    got, preds = task.forward(model, b)
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    assert preds.shape == (4,)
