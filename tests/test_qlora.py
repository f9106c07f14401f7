"""model.quantize=4bit (QLoRA's base through bitsandbytes): the frozen linear layers are
stored in 4 bits, the adapters and the head train in fp32, the run reloads through predict
to the same outputs and exports merged into the full-precision base; a method that trains
base weights is refused with the reason; the plan's weight bytes are bitsandbytes' own."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides

pytest.importorskip("bitsandbytes", reason="model.quantize=4bit needs tunelab[qlora]")

from tunelab.config import load_config  # noqa: E402
from tunelab.errors import ConfigError  # noqa: E402
from tunelab.inference import export, load_run_model  # noqa: E402
from tunelab.tasks import prepare_data  # noqa: E402
from tunelab.train import run  # noqa: E402


def four_bit_layers(model) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_qlora_trains_reloads_and_exports(precision, tiny_model, toy_csv, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from tunelab.inference import score_run
    from tunelab.measure import evaluate
    from tunelab.precision import RELOAD_RTOL

    extra = {"model.quantize": "4bit", "train.epochs": 2, "train.lr": 1e-2,
             "train.mixed_precision": precision}  # fmt: skip
    over = tiny_overrides(tiny_model, toy_csv, tmp_path, **extra)
    cfg = load_config(None, [*over, "method=lora"])
    rec = run(cfg)
    assert rec.ok and "uint8" in rec.env.weights  # the 4-bit weights, packed two per byte
    assert rec.env.precision == precision
    run_dir = tmp_path / "lora-seed0"
    model, _ = load_run_model(run_dir)
    # every linear layer of the 2 blocks (q, k, v, o, up, down) and the pooler: 4-bit,
    # dequantised to the run's compute dtype
    assert four_bit_layers(model) == 2 * 6 + 1
    import bitsandbytes as bnb

    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert {m.compute_dtype for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)} == {want}
    trained = [n for n, p in model.named_parameters() if p.requires_grad or "lora_" in n]
    assert trained and all(p.dtype == torch.float32 for n, p in model.named_parameters()
                           if "lora_" in n or "classifier" in n)  # fmt: skip
    again = score_run(run_dir)  # the run's own model, in its own precision
    assert again.accuracy == rec.test.accuracy
    assert again.loss == pytest.approx(rec.test.loss, rel=RELOAD_RTOL[precision])
    data = prepare_data(cfg)
    plain = AutoModelForSequenceClassification.from_pretrained(export(run_dir, tmp_path / "out"))
    assert four_bit_layers(plain) == 0 and not any("lora" in n for n, _ in plain.named_parameters())
    merged = evaluate(plain.eval(), data.task, data.test, 64, 0, torch.device("cpu"), precision)
    # merged into the full-precision base: the 4-bit rounding is gone, the adapter kept
    assert abs(merged.accuracy - rec.test.accuracy) < 0.1, (merged.accuracy, rec.test.accuracy)


def test_a_method_that_trains_base_weights_is_refused(tiny_model, toy_csv, tmp_path):
    over = tiny_overrides(tiny_model, toy_csv, tmp_path, **{"model.quantize": "4bit"})
    cfg = load_config(None, [*over, "method=full"])
    with pytest.raises(ConfigError, match="method full trains the base's own weights"):
        run(cfg)


def test_the_plan_counts_bitsandbytes_own_bytes(tiny_llama):
    """The weights a quantised run holds, by bitsandbytes' storage (its quantised tensors
    and their quantisation state), equal the plan's count: fp32 weights minus each
    quantised weight's 4 - NF4_BYTES bytes."""
    from transformers import AutoModelForCausalLM

    from tunelab.config import ModelConfig
    from tunelab.methods import build_method
    from tunelab.quantize import NF4_BYTES, quantization, quantized_params

    mc = ModelConfig(name=tiny_llama, quantize="4bit")
    lora = build_method({"name": "lora"})
    full = lora.prepare(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32))
    n = quantized_params(full)
    q = quantization(mc, lora, "no", torch.device("cpu"))
    small = AutoModelForCausalLM.from_pretrained(
        tiny_llama, quantization_config=q, dtype=torch.float32, device_map={"": "cpu"}
    )
    small = build_method({"name": "lora"}).prepare(small)
    packed = [p for p in small.parameters() if p.dtype == torch.uint8]
    assert n == sum(p.quant_state.shape.numel() for p in packed)

    def held(model) -> int:
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        states = [p.quant_state for p in model.parameters() if hasattr(p, "quant_state")]
        return params + sum(s.absmax.numel() * s.absmax.element_size() + s.state2.absmax.numel()
                            * 4 for s in states)  # fmt: skip

    planned = held(full) - n * (4 - NF4_BYTES)
    assert held(small) == pytest.approx(planned, rel=0.01)


@pytest.mark.slow
def test_qlora_on_a_decoder(precision, tiny_llama, toy_csv, tmp_path):
    """The tiny Llama (classification as text): 4-bit q/k/v/o and MLP layers, the tied
    embedding and LM head in fp32; the loss falls and predict reloads the run's own model."""
    from test_causal_lm import llama_cfg

    from tunelab.inference import score_run
    from tunelab.precision import RELOAD_RTOL
    from tunelab.results import read_metrics

    cfg = llama_cfg(tiny_llama, toy_csv, tmp_path, "method=lora", **{"model.quantize": "4bit",
                    "train.lr": 1e-2, "train.epochs": 2,
                    "train.mixed_precision": precision})  # fmt: skip
    rec = run(cfg)
    assert rec.ok and "uint8" in rec.env.weights
    again = score_run(tmp_path / "lora-causal-lm-seed0")
    assert again.accuracy == rec.test.accuracy
    assert again.loss == pytest.approx(rec.test.loss, rel=RELOAD_RTOL[precision])
    run_dir = tmp_path / "lora-causal-lm-seed0"
    losses = [r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r]
    assert losses[-1] < losses[0], losses
    model, _ = load_run_model(run_dir)
    assert four_bit_layers(model) == 2 * 7  # q, k, v, o, gate, up, down per block
    data = prepare_data(cfg)
    batch = data.task.collate(data.test, list(range(8)), data.tokenizer.pad_token_id)
    with torch.no_grad():
        a = data.task.score(model, batch)[1]
        b = data.task.score(load_run_model(run_dir)[0], batch)[1]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
