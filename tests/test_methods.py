"""One matrix over every method in METHODS, on the tiny random BERT."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides

from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.inference import score_run
from tunelab.methods import METHODS, build_method
from tunelab.models import load_model
from tunelab.precision import RELOAD_RTOL
from tunelab.tasks import prepare_data
from tunelab.train import run

H, L, FF, LABELS = 32, 2, 64, 2
HEAD = H * LABELS + LABELS  # classifier weight + bias


def expected_trainable(name: str, model) -> int:
    """Trainable-parameter count of each method, derived independently of its code from the
    backbone before ``prepare``."""
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    if name in ("full", "llrd"):
        return total
    if name == "freeze":  # top 2 of 2 layers + pooler + head: all but embeddings
        return sum(p.numel() for n, p in params.items() if "embeddings" not in n)
    if name == "bitfit":
        return sum(p.numel() for n, p in params.items() if n.endswith("bias")) + H * LABELS
    if name == "lora":  # r=8: A (8 x H) + B (H x 8) on query and value of each layer
        return L * 2 * (8 * H + H * 8) + HEAD
    if name == "prompt":
        return 10 * H + HEAD
    if name == "ia3":  # peft's BERT targets key, value (scale out = H) and every module named
        # "output.dense" as feed-forward (scale in): attention output (H) and FFN output (FF)
        return L * (H + H + H + FF) + HEAD
    per_layer = {  # each of query and value (H x H) in each layer
        "adalora": 12 * H + H * 12 + 12,  # init_r 12: P (12 x H), Q (H x 12), E (12)
        "vera": 256 + H,  # only the vectors d (r = 256) and b (H); the random A, B frozen
        "loha": 2 * (8 * H + H * 8),  # two rank-8 products
        "lokr": 4 * 4 + 8 * 8,  # 32 = 4 x 8: W1 4x4 (x) W2 8x8, both whole (8 < 2r)
        "oft": 32 * 31 // 2,  # one 32-block: its skew-symmetric upper triangle
    }
    if name in per_layer:
        return L * 2 * per_layer[name] + HEAD
    if name == "lntuning":  # the two LayerNorms of each block (gain + shift), not the
        return L * 2 * 2 * H + HEAD  # embeddings' one
    raise AssertionError(f"no expectation for method {name}")


@pytest.mark.parametrize("name", list(METHODS))
def test_method_hooks(name, tiny_model, toy_csv, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_model, toy_csv, tmp_path, **{"method.name": name}))
    data = prepare_data(cfg)
    torch.manual_seed(0)
    model = load_model(tiny_model, data.splits.label_names)
    method = cfg.method
    if name == "prefix":  # peft needs past_key_values, which BERT in transformers 5 lacks
        with pytest.raises(TunelabError, match="past_key_values"):
            method.prepare(model)
        return
    expected = expected_trainable(name, model)  # from the untouched backbone
    model = method.prepare(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    groups = method.param_groups(model, method.lr, 0.01)
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable
    opt = torch.optim.AdamW(groups)
    from tunelab.batches import collate, train_batches

    model.train()
    for idx in train_batches(data.train.lengths, 16, 0, 0)[:3]:
        loss = model(**collate(data.train, idx, 0)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = dict(model.named_parameters())
    for n, t in frozen.items():
        assert torch.equal(after[n], t), f"frozen parameter {n} changed"
    assert any(not torch.equal(after[n], t) for n, t in before.items()), "nothing trained"


# make test-fast: these (method, precision) pairs; make test: every method in fp32 and the
# bf16 ones in BF16_TEST; make test-extended: the rest of bf16 (issue 31: make test in 10 min)
FAST_LEARNS = {("full", "no"), ("lora", "bf16"), ("prompt", "bf16")}
BF16_TEST = {"full", "lora", "prompt", "ia3"}


def learns_cases():
    out = []
    for name in (m for m in METHODS if m != "prefix"):
        for precision, label in (("no", "fp32"), ("bf16", "bf16")):
            marks = ()
            if (name, precision) not in FAST_LEARNS:
                marks = (pytest.mark.slow,)
                if precision == "bf16" and name not in BF16_TEST:
                    marks += (pytest.mark.extended,)
            out.append(pytest.param(name, precision, marks=marks, id=f"{label}-{name}"))
    return out


@pytest.mark.parametrize("name, precision", learns_cases())
def test_method_learns_saves_and_reloads(name, precision, tiny_model, toy_csv, tmp_path):
    over = {"method.name": name, "train.epochs": 6, "train.mixed_precision": precision}
    cfg = load_config(None, tiny_overrides(tiny_model, toy_csv, tmp_path, **over))
    rec = run(cfg)
    losses = [r["train_loss"] for r in _rows(tmp_path / f"{name}-seed0") if "train_loss" in r]
    assert losses[-1] < losses[0], f"{name}: loss did not fall: {losses}"
    assert rec.status == "ok" and rec.saved_bytes > 0 and rec.env.precision == precision
    # the saved adapter / model reproduces the recorded test metrics in the run's precision
    again = score_run(tmp_path / f"{name}-seed0")
    assert again.accuracy == rec.test.accuracy and again.macro_f1 == rec.test.macro_f1
    assert again.loss == pytest.approx(rec.test.loss, rel=RELOAD_RTOL[precision])


def _rows(run_dir):
    from tunelab.results import read_metrics

    return read_metrics(run_dir)


@pytest.mark.slow  # 8 epochs: make test, not test-fast
def test_full_finetuning_learns_the_toy_task(tiny_model, toy_csv, tmp_path):
    cfg = load_config(
        None,
        tiny_overrides(
            tiny_model,
            toy_csv,
            tmp_path,
            **{"method.name": "full", "train.epochs": 8, "train.lr": 1e-3},
        ),
    )
    rec = run(cfg)
    assert rec.test.accuracy > 0.8, rec.test


@pytest.mark.slow  # two runs: make test, not test-fast
def test_same_seed_same_numbers(tiny_model, toy_csv, tmp_path):
    recs = [
        run(
            load_config(
                None,
                tiny_overrides(tiny_model, toy_csv, tmp_path / str(i), **{"method.name": "lora"}),
            )
        )
        for i in range(2)
    ]
    assert recs[0].curve == [
        {**p, "train_time_s": recs[0].curve[j]["train_time_s"]} for j, p in enumerate(recs[1].curve)
    ]
    assert recs[0].test == recs[1].test


def test_prompt_text_initialisation_copies_token_embeddings(tiny_model):
    from tunelab.models import load_tokenizer

    model = load_model(tiny_model, ["neg", "pos"])
    words = model.get_input_embeddings().weight.detach().clone()
    method = build_method({"name": "prompt", "init": "text", "init_text": "great movie"})
    peft_model = method.prepare(model)
    prompt = peft_model.prompt_encoder["default"].embedding.weight.detach()
    ids = load_tokenizer(tiny_model)("great movie")["input_ids"]  # peft keeps [CLS]/[SEP]
    assert prompt.shape[0] == 10
    for i in range(10):  # the text's ids, repeated to fill the virtual tokens
        assert torch.equal(prompt[i], words[ids[i % len(ids)]]), i


def test_methods_command_lists_every_method_with_defaults(capsys):
    from tunelab.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in METHODS:
        assert f"\n{name}" in "\n" + out
    assert "method.r = 8" in out and "method.alpha = 16" in out
    assert "method.num_virtual_tokens = 10" in out
