"""measure: FLOPs per token against a hand count for one layer, parameter counts, evaluate."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert_config
from transformers import AutoModelForSequenceClassification

from tunelab.config import load_config
from tunelab.measure import count_params, evaluate, flops_per_token
from tunelab.methods import build_method

H, FF, LABELS = 32, 64, 2


def tiny_one_layer():
    torch.manual_seed(0)
    cfg = tiny_bert_config(vocab_size=50, num_hidden_layers=1, num_labels=LABELS)
    return AutoModelForSequenceClassification.from_config(cfg)


def hand_count() -> dict[str, int]:
    """Weights that take part in matrix products for one BERT layer + pooler + head (the
    embedding tables and their LayerNorm are lookups / elementwise: depth 0, not counted)."""
    attention = 4 * (H * H + H) + 2 * H  # Q, K, V, output projection + its LayerNorm
    ffn = (H * FF + FF) + (FF * H + H) + 2 * H  # up, down + LayerNorm
    top = (H * H + H) + (H * LABELS + LABELS)  # pooler + classifier
    return {"layer": attention + ffn, "top": top}


def test_flops_per_token_full_equals_6n_by_hand():
    n = sum(hand_count().values())
    f = flops_per_token(tiny_one_layer())
    assert f["forward"] == 2 * n
    assert f["total"] == 6 * n  # forward 2N + activation grads 2N + weight grads 2N


def test_flops_frozen_backbone_skips_backward_below_the_lowest_trainable_layer():
    model = build_method({"name": "freeze", "k": 0}).prepare(tiny_one_layer())
    c = hand_count()
    f = flops_per_token(model)
    assert f["forward"] == 2 * (c["layer"] + c["top"])
    assert f["backward"] == 2 * c["top"] + 2 * c["top"]  # only pooler + head need gradients


def test_count_params():
    model = tiny_one_layer()
    full = count_params(model)
    assert full["trainable"] == full["total"] == sum(p.numel() for p in model.parameters())
    assert full["trainable_pct"] == 100.0
    frozen = count_params(build_method({"name": "bitfit"}).prepare(model))
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    assert frozen["trainable"] == biases + H * LABELS
    assert 0 < frozen["trainable_pct"] < 10


def test_evaluate_scores_predictions_against_labels():
    from tunelab.batches import Encoded
    from tunelab.tasks import build_task

    model = tiny_one_layer()
    task = build_task(load_config(), ["neg", "pos"])
    ids = [[1, 5, 6, 2], [1, 7, 2], [1, 8, 9, 10, 2]] * 5
    enc = Encoded(ids, None, [0, 1, 1] * 5)
    out = evaluate(model, task, enc, 4, 0, torch.device("cpu"))
    with torch.no_grad():
        model.eval()
        preds = [model(input_ids=torch.tensor([x])).logits.argmax(-1).item() for x in ids]
    hits = sum(p == y for p, y in zip(preds, enc.labels, strict=True))
    assert out.accuracy == pytest.approx(hits / len(ids))
    assert out.loss > 0 and 0 <= out.macro_f1 <= 1
