"""The LoRA variants and PEFT's other adapters (issue 21): each starts as the base model's
function, trains, saves, reloads through predict with identical outputs and exports to a
plain transformers folder that loads without peft, on the tiny encoder and the tiny decoder;
LoRA+'s learning rates, rsLoRA's scale and AdaLoRA's rank budget checked from outside."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_overrides
from test_causal_lm import llama_cfg

from tunelab.config import load_config
from tunelab.inference import export, load_run_model
from tunelab.methods import build_method
from tunelab.models import load_model
from tunelab.results import read_metrics
from tunelab.tasks import prepare_data
from tunelab.train import run

VARIANTS = {  # name -> method spec
    "dora": {"name": "lora", "dora": True},
    "rslora": {"name": "lora", "rslora": True},
    "pissa": {"name": "lora", "init": "pissa"},
    "olora": {"name": "lora", "init": "olora"},
    "gaussian": {"name": "lora", "init": "gaussian"},
    "loraplus": {"name": "lora", "loraplus_ratio": 16},
    "vera": {"name": "vera"},
    "loha": {"name": "loha"},
    "lokr": {"name": "lokr"},
    "adalora": {"name": "adalora"},
    "oft": {"name": "oft"},
    "lntuning": {"name": "lntuning"},
}
FAST = {"pissa", "adalora"}  # make test-fast keeps these; the rest are slow


def cases():
    return [pytest.param(k, marks=() if k in FAST else (pytest.mark.slow,), id=k) for k in VARIANTS]


def knob_overrides(spec: dict) -> dict:
    return {f"method.{k}": v for k, v in spec.items()}


def batch_of(data, n=16):
    return data.task.collate(data.test, list(range(n)), data.tokenizer.pad_token_id)


@pytest.mark.parametrize("variant", cases())
def test_starts_as_the_base_model(variant, tiny_model, toy_csv, tmp_path):
    """At initialisation every adapter is the identity (B = 0, d-vectors, E = 0, identity
    rotations, copied norms; PiSSA/OLoRA: residual + principal part = W): same logits."""
    cfg = load_config(None, tiny_overrides(tiny_model, toy_csv, tmp_path))
    data = prepare_data(cfg)
    torch.manual_seed(0)
    model = load_model(tiny_model, data.splits.label_names).eval()
    batch = batch_of(data)
    with torch.no_grad():
        before = model(**batch).logits
        adapted = build_method(VARIANTS[variant]).prepare(model).eval()
        after = adapted(**batch).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def outputs(task, model, batch):
    """Label scores: the logits of a classifier, the label words' scores of a decoder."""
    with torch.no_grad():
        return task.score(model, batch)[1] if hasattr(task, "score") else model(**batch).logits


def check_roundtrip(run_dir, cfg, tmp_path, plain_class):
    """predict's loader gives the recorded scores' logits; the export loads without peft and
    gives the same logits."""
    data = prepare_data(cfg)
    model, _ = load_run_model(run_dir)
    batch = batch_of(data)
    a, b = outputs(data.task, model, batch), outputs(data.task, load_run_model(run_dir)[0], batch)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # reload twice: identical
    out = export(run_dir, tmp_path / "plain")
    plain = plain_class.from_pretrained(out).eval()
    assert not any(k in n for n, _ in plain.named_parameters() for k in ("lora", "vera", "oft"))
    torch.testing.assert_close(outputs(data.task, plain, batch), a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", cases())
def test_trains_reloads_and_exports_on_an_encoder(variant, precision, tiny_model, toy_csv,
                                                  tmp_path):  # fmt: skip
    from transformers import AutoModelForSequenceClassification

    from tunelab.inference import score_run
    from tunelab.precision import RELOAD_RTOL

    extra = {**knob_overrides(VARIANTS[variant]), "train.epochs": 2, "train.lr": 1e-2,
             "train.mixed_precision": precision}  # fmt: skip
    cfg = load_config(None, tiny_overrides(tiny_model, toy_csv, tmp_path, **extra))
    rec = run(cfg)
    assert rec.ok and rec.saved_bytes > 0 and rec.env.precision == precision
    run_dir = tmp_path / f"{cfg.method.name}-seed0"
    again = score_run(run_dir)  # predict's loader, the run's own precision
    assert again.accuracy == rec.test.accuracy
    assert again.loss == pytest.approx(rec.test.loss, rel=RELOAD_RTOL[precision])
    check_roundtrip(run_dir, cfg, tmp_path, AutoModelForSequenceClassification)


@pytest.mark.slow
@pytest.mark.extended  # make test-extended (CI runs it after make test): ~2 min
@pytest.mark.parametrize("variant", [k for k in VARIANTS if k != "gaussian"])
def test_trains_reloads_and_exports_on_a_decoder(variant, precision, tiny_llama, toy_csv,
                                                 tmp_path):  # fmt: skip
    from transformers import AutoModelForCausalLM

    from tunelab.inference import score_run
    from tunelab.precision import RELOAD_RTOL

    lr = 3e-2 if variant in ("vera", "lntuning") else 1e-2
    extra = {**knob_overrides(VARIANTS[variant]), "train.lr": lr,
             "train.mixed_precision": precision}  # fmt: skip
    cfg = llama_cfg(tiny_llama, toy_csv, tmp_path, **extra)
    rec = run(cfg)
    assert rec.ok and rec.test and rec.env.precision == precision
    again = score_run(tmp_path / f"{cfg.method.name}-causal-lm-seed0")
    assert again.accuracy == rec.test.accuracy
    assert again.loss == pytest.approx(rec.test.loss, rel=RELOAD_RTOL[precision])
    run_dir = tmp_path / f"{cfg.method.name}-causal-lm-seed0"
    losses = [r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r]
    assert losses[-1] < losses[0], losses
    check_roundtrip(run_dir, cfg, tmp_path, AutoModelForCausalLM)


def test_loraplus_gives_b_its_ratio_of_the_learning_rate(tiny_model):
    model = build_method({"name": "lora", "loraplus_ratio": 16}).prepare(
        load_model(tiny_model, ["neg", "pos"])
    )
    method = build_method({"name": "lora", "loraplus_ratio": 16})
    groups = method.param_groups(model, 1e-3, 0.01)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert lr_of[id(p)] == pytest.approx(1.6e-2 if "lora_B" in n else 1e-3), n


def test_rslora_scales_by_the_square_root_of_the_rank(tiny_model):
    model = build_method({"name": "lora", "rslora": True, "r": 16, "alpha": 8}).prepare(
        load_model(tiny_model, ["neg", "pos"])
    )
    scales = {m.scaling["default"] for m in model.modules() if hasattr(m, "lora_A")}
    assert scales and all(s == pytest.approx(8 / math.sqrt(16)) for s in scales)


def test_adalora_moves_the_rank_budget(tiny_model, toy_csv, tmp_path):
    """After a run the budget is spent: the kept ranks sum to target_r per adapted layer on
    average, unevenly; and the pattern read back from the masked singular values (what a
    resumed run uses) is peft's own."""
    cfg = load_config(None, tiny_overrides(tiny_model, toy_csv, tmp_path))
    data = prepare_data(cfg)
    torch.manual_seed(0)
    method = build_method({"name": "adalora", "init_r": 6, "target_r": 2})
    model = method.prepare(load_model(tiny_model, data.splits.label_names))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    total = 20
    for step in range(total):
        idx = list(range((step * 8) % 64, (step * 8) % 64 + 8))
        model(**data.task.collate(data.train, idx, data.tokenizer.pad_token_id)).loss.backward()
        opt.step()
        method.after_step(model, step, total)
        opt.zero_grad()
    config = model.peft_config["default"]
    assert config.total_step == total and config.rank_pattern
    kept = [sum(v) for v in config.rank_pattern.values()]
    assert sum(kept) == 2 * len(kept)  # target_r x adapted layers
    from tunelab.methods.adalora import kept_ranks

    assert kept_ranks(model.base_model.model) == config.rank_pattern


def test_adalora_refuses_a_budget_with_no_rank_to_move(tiny_model):
    """target_r = init_r leaves AdaLoRA nothing to mask (peft's budget step then fails deep
    inside at the first step): refused up front, and its search space never samples it."""
    from tunelab.errors import ConfigError
    from tunelab.methods import METHODS

    with pytest.raises(ConfigError, match="target_r .8. is not below method.init_r .8."):
        build_method({"name": "adalora", "init_r": 8, "target_r": 8}).prepare(
            load_model(tiny_model, ["neg", "pos"])
        )
    space = METHODS["adalora"].space
    assert max(space["target_r"][1]) < min(space["init_r"][1])
