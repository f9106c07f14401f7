"""Device and precision are decided once per run, from the config and the device, and
written in its record; the machine the suite runs on never decides what is covered. The
CUDA-side rules are checked here through their logic (torch's CUDA queries answered as a GPU
would answer them); bench/device_check.py checks them on a real GPU."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides

from tunelab import precision as P
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.train import run


def gpu(monkeypatch, bf16: bool, count: int = 1) -> None:
    """torch's CUDA queries answered as a machine with ``count`` GPUs would answer them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")


def test_auto_picks_fp16_with_loss_scaling_on_a_gpu_without_bf16(monkeypatch):
    gpu(monkeypatch, bf16=False)
    mode, why = P.choose_precision("auto", "cuda")
    assert mode == "fp16" and "loss scaling" in why
    with pytest.raises(ConfigError, match="does not compute bf16.*fp16"):
        P.choose_precision("bf16", "cuda")
    gpu(monkeypatch, bf16=True)
    assert P.choose_precision("auto", "cuda")[0] == "bf16"
    assert P.device_type("auto") == "cuda" and P.device_type("cpu") == "cpu"


def test_fp16_is_refused_on_a_cpu():
    with pytest.raises(ConfigError, match="fp16 is for CUDA GPUs.*bf16 or no"):
        P.choose_precision("fp16", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's answer")
def test_a_run_asking_for_a_gpu_that_is_not_there_is_refused_before_it_starts(
    tiny_model, toy_csv, tmp_path
):
    cfg = load_config(
        None, tiny_overrides(tiny_model, toy_csv, tmp_path, **{"train.device": "cuda"})
    )
    with pytest.raises(ConfigError, match="train.device=cuda: torch sees no CUDA GPU"):
        run(cfg)
    assert not any(tmp_path.iterdir())  # nothing written


def test_one_process_runs_fp32_then_bf16_then_fp32(tiny_model, toy_csv, tmp_path):
    """accelerate keeps the precision process-wide; a compare, tune or notebook runs several
    precisions in one process, each run recording its own."""
    seen = []
    for i, mp in enumerate(["no", "bf16", "no"]):
        over = {"train.mixed_precision": mp, "train.max_steps": 2, "method.name": "lora"}
        rec = run(load_config(None, tiny_overrides(tiny_model, toy_csv, tmp_path / str(i), **over)))
        seen.append((rec.env.precision, "bfloat16" in rec.env.weights))
    assert seen == [("no", False), ("bf16", True), ("no", False)]


@pytest.mark.parametrize("method", ["loha", "lokr", "vera", "oft", "lora"])
def test_adapted_layers_return_autocast_dtype(method, tiny_model):
    """Under bf16 autocast every adapted linear layer returns bf16 as the plain layer does
    (DeBERTa-v2 mixes a projection's output with bf16 attention scores); fp32 outside it."""
    from tunelab.methods import build_method
    from tunelab.models import apply_method, load_model

    model = apply_method(build_method({"name": method}), load_model(tiny_model, ["a", "b"]),
                         torch.float32)  # fmt: skip
    query = next(m for n, m in model.named_modules() if n.endswith("attention.self.query"))
    x = torch.randn(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert query(x).dtype == torch.bfloat16
    assert query(x).dtype == torch.float32


def test_cuda_rng_is_restored_only_onto_as_many_gpus(monkeypatch):
    from tunelab.checkpoint import restore_cuda_rng

    assert restore_cuda_rng(None) is False
    set_calls = []
    gpu(monkeypatch, bf16=True, count=1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: set_calls.append(len(s)))
    two = [torch.zeros(8, dtype=torch.uint8)] * 2
    assert restore_cuda_rng(two) is False and not set_calls  # saved on 2 GPUs, resumed on 1
    gpu(monkeypatch, bf16=True, count=2)
    assert restore_cuda_rng(two) is True and set_calls == [2]


def test_planning_for_a_gpu_without_one_says_the_peak_is_assumed(tmp_path, monkeypatch):
    from tunelab.planning import rate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    peak, where = rate.cuda_peak("bf16")
    assert peak == rate.H100_DENSE["bf16"] and where.startswith("assumed")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's answer")
def test_calibrating_a_cuda_plan_without_a_gpu_is_refused(tiny_model, toy_csv, tmp_path, capsys):
    from tunelab.cli import main

    args = ["plan", "--model", tiny_model, "--dataset", toy_csv, "--device", "cuda",
            "--calibrate", "--methods", "lora", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "Traceback" not in err
    assert main(args[:7] + ["--methods", "lora", "--out", str(tmp_path)]) == 0
    assert "assumed: an H100" in capsys.readouterr().out


def test_instruction_lora_validates_and_generates_in_bf16(tiny_llama, tmp_path):
    """The frozen base is stored in bf16 under bf16 autocast: the greedy samples each
    validation generates run in the run's precision too (they failed with a dtype mismatch)."""
    import json

    from tunelab.config import load_config
    from tunelab.train import run

    rows = [{"prompt": f"Repeat {w}.", "response": f"{w} {w}"} for w in ["apple", "river"] * 30]
    path = tmp_path / "inst.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    over = [f"model.name={tiny_llama}", f"data.dataset={path}", "data.response_column=response",
            "task=causal-lm", f"out_dir={tmp_path / 'runs'}", "tracker=none", "train.epochs=1",
            "train.batch_size=16", "method=lora", "train.mixed_precision=bf16"]  # fmt: skip
    rec = run(load_config(None, over))
    assert rec.ok and rec.env.precision == "bf16" and "bfloat16" in rec.env.weights
    assert rec.curve[-1]["samples"] and rec.curve[-1]["samples"][0]["response"] is not None
