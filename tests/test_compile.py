"""train.compile (issue 22's torch.compile lever): compiled in place, so names, saving and the
optimizer see the same parameters; the compiled step computes what the eager one does; a run
with it trains, saves and says so in its record."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert_config, tiny_overrides
from test_plan import llama_config

from tunelab import planning as plan
from tunelab.errors import ConfigError
from tunelab.methods import build_method
from tunelab.models import compile_model


def _grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, how",
    [
        pytest.param("bert", "blocks", marks=pytest.mark.extended),  # ~45 s: make test-extended
        pytest.param("llama", "blocks", marks=pytest.mark.extended),  # ~1 min cold each
        pytest.param("bert", "model", marks=pytest.mark.extended),
    ],
)
def test_a_compiled_model_keeps_its_names_and_computes_the_eager_step(arch, how):
    task = "classification" if arch == "bert" else "causal-lm"
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = tiny_bert_config(num_labels=2, **no_dropout) if arch == "bert" else llama_config()
    torch.manual_seed(0)
    lora = build_method({"name": "lora", "dropout": 0.0})  # no dropout: two steps comparable
    model = lora.prepare(plan.build(config, task))
    names = [n for n, _ in model.named_parameters()]
    keys = list(model.state_dict())
    batches = [plan.training_batch(config, task, 4, n) for n in (12, 9)]  # two lengths
    eager = [_grads(model, b) for b in batches]
    compile_model(model, how)
    assert [n for n, _ in model.named_parameters()] == names
    assert list(model.state_dict()) == keys
    compiled = [m for m in model.modules() if getattr(m, "_compiled_call_impl", None)]
    assert compiled and (how == "model" or len(compiled) == config.num_hidden_layers)
    for (loss, grads), batch in zip(eager, batches, strict=True):
        loss_c, grads_c = _grads(model, batch)
        assert loss_c == pytest.approx(loss, rel=1e-4)
        assert grads_c.keys() == grads.keys()
        eager_g = torch.cat([g.flatten() for g in grads.values()])  # one vector: single
        comp_g = torch.cat([grads_c[n].flatten() for n in grads])  # tiny grads are roundoff
        assert (comp_g - eager_g).norm() <= 1e-4 * eager_g.norm()


def test_blocks_needs_a_stack_of_blocks():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.config = type("C", (), {"model_type": "toy"})()
    with pytest.raises(ConfigError, match="train.compile=model"):
        compile_model(model, "blocks")


@pytest.mark.slow
@pytest.mark.extended  # CI runs it after make test (issue 31: make test in 10 min)
def test_a_run_with_compiled_blocks_trains_and_saves(tmp_path, tiny_model, toy_csv):
    from tunelab.config import load_config
    from tunelab.inference import load_run_model
    from tunelab.train import run

    over = tiny_overrides(tiny_model, toy_csv, tmp_path, **{"train.epochs": 1})
    record = run(load_config(None, [*over, "method=lora", "train.compile=blocks"]))
    assert record.ok and record.config.train.compile == "blocks"
    assert record.test.accuracy > 0
    model, _ = load_run_model(tmp_path / "lora-seed0")  # an ordinary saved adapter
    assert not any(getattr(m, "_compiled_call_impl", None) for m in model.modules())
