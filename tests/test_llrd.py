"""Layer-wise LR decay: every parameter's group lr equals lr * decay^(L+1-depth)."""

import pytest
import torch
from conftest import tiny_bert_config
from transformers import AutoModelForSequenceClassification, LlamaConfig

from tunelab.anatomy import anatomy
from tunelab.methods import build_method


def lr_of(groups, p):
    return next(g["lr"] for g in groups if any(q is p for q in g["params"]))


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_group_lrs_follow_the_formula(arch):
    if arch == "bert":
        cfg = tiny_bert_config(vocab_size=50, num_hidden_layers=3)
    else:
        cfg = LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=32,
            pad_token_id=0,
        )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg)
    method = build_method({"name": "llrd", "decay": 0.5})
    groups = method.param_groups(model, 1e-3, 0.01)
    a = anatomy(model)
    n = a.n_blocks
    assert n == 3
    for name, p in model.named_parameters():
        if "layers.1." in name or "layer.1." in name:
            expected = 1e-3 * 0.5 ** (n + 1 - 2)  # block index 1 is depth 2
        elif "embed" in name:
            expected = 1e-3 * 0.5 ** (n + 1)
        elif "classifier" in name or "score" in name:
            expected = 1e-3
        else:
            expected = 1e-3 * 0.5 ** (n + 1 - a.depth(name))
        assert lr_of(groups, p) == pytest.approx(expected), name
    # every trainable parameter in exactly one group; no weight decay on 1-D tensors
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    for g in groups:
        if any(p.ndim < 2 for p in g["params"]):
            assert g["weight_decay"] == 0.0


def test_scheduler_scales_every_group_alike():
    from tunelab.config import load_config
    from tunelab.optim import make_scheduler

    model = AutoModelForSequenceClassification.from_config(tiny_bert_config(vocab_size=50))
    groups = build_method({"name": "llrd"}).param_groups(model, 1e-3, 0.0)
    opt = torch.optim.AdamW(groups)
    sched = make_scheduler(opt, load_config(None, ["train.warmup=0.1"]), 100)
    initial = [g["initial_lr"] for g in opt.param_groups]  # scheduler keeps the group lr
    for _ in range(30):
        opt.step()
        sched.step()
    ratios = {round(g["lr"] / i, 9) for g, i in zip(opt.param_groups, initial, strict=True)}
    assert len(ratios) == 1  # the schedule multiplies, the decay ratios survive


def test_bad_decay_is_refused():
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match="decay"):
        build_method({"name": "llrd", "decay": 1.5})
