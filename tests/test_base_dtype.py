"""model.base_dtype: frozen weights stored in bf16, trained ones in fp32 (issue 21): the rule
auto follows, a training step under bf16 autocast that changes only the trained weights, the
plan's byte counts against the real tensors, and a run that records it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_bert_config, tiny_overrides
from test_plan import llama_config

from tunelab import planning as plan
from tunelab.errors import ConfigError
from tunelab.methods import METHODS, build_method
from tunelab.models import frozen_dtype, store_frozen


@pytest.mark.parametrize(
    "setting, precision, method, expected",
    [
        ("auto", "bf16", "lora", torch.bfloat16),
        ("auto", "bf16", "freeze", torch.bfloat16),  # its frozen lower layers
        ("auto", "bf16", "full", torch.float32),  # nothing is frozen: fp32 master weights
        ("auto", "no", "lora", torch.float32),
        ("fp32", "bf16", "lora", torch.float32),
        ("bf16", "bf16", "full", torch.bfloat16),
    ],
)
def test_auto_stores_frozen_weights_in_bf16_where_the_run_computes_in_bf16(
    setting, precision, method, expected
):
    assert frozen_dtype(setting, precision, METHODS[method]) == expected


def test_bf16_storage_without_bf16_compute_is_refused():
    with pytest.raises(ConfigError, match="train.mixed_precision=bf16"):
        frozen_dtype("bf16", "no", METHODS["lora"])


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_a_bf16_base_trains_its_fp32_adapters_under_autocast(arch):
    task = "classification" if arch == "bert" else "causal-lm"
    config = tiny_bert_config(num_labels=2) if arch == "bert" else llama_config()
    torch.manual_seed(0)
    model = store_frozen(build_method({"name": "lora"}).prepare(plan.build(config, task)),
                         torch.bfloat16)  # fmt: skip
    linear = {id(p) for m in model.modules() if isinstance(m, torch.nn.Linear)
              for p in m.parameters(recurse=False)}  # fmt: skip
    tied = id(model.get_input_embeddings().weight)
    for n, p in model.named_parameters():
        frozen_linear = not p.requires_grad and id(p) in linear and id(p) != tied
        assert p.dtype == (torch.bfloat16 if frozen_linear else torch.float32), n
    assert any(p.dtype == torch.bfloat16 for p in model.parameters())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**plan.training_batch(config, task, 4, 12)).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], t) for n, t in frozen.items())
    assert any(not torch.equal(after[n], t) for n, t in trained.items())
    assert all(after[n].dtype == torch.float32 for n in trained)  # still fp32 after the step


@pytest.mark.parametrize("method", ["lora", "bitfit", "ia3"])
def test_plan_counts_the_bf16_base(method):
    config = tiny_bert_config(num_labels=2)
    torch.manual_seed(0)
    model = build_method({"name": method}).prepare(plan.build(config, "classification"))
    weights = plan.state_bytes(store_frozen(model, torch.bfloat16))["weights"]  # real tensors
    t = plan.trace(config, "classification", {"name": method}, 4, 12, True, False, torch.bfloat16)
    assert t["weights"] == weights
    fp32 = plan.trace(config, "classification", {"name": method}, 4, 12, True, False)
    assert t["weights"] < fp32["weights"]


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt"])
def test_the_bf16_base_computes_what_autocast_computed_from_fp32(method):
    """autocast rounds an fp32 weight to bf16 before each matmul; storing it rounded gives the
    same numbers: the same logits and loss, bit for bit (so accuracy cannot move)."""
    config = llama_config()
    torch.manual_seed(0)
    model = build_method({"name": method}).prepare(plan.build(config, "causal-lm")).eval()
    batch = plan.training_batch(config, "causal-lm", 4, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(**batch)
        store_frozen(model, torch.bfloat16)
        after = model(**batch)
    assert any(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(after.logits, before.logits) and torch.equal(after.loss, before.loss)


@pytest.mark.slow  # a process of its own: ~15 s
def test_a_run_records_its_bf16_base(tiny_model, toy_csv, tmp_path):
    """In its own process: accelerate's precision is set once per process."""
    import subprocess
    import sys

    from tunelab.results import read_record

    over = {"method.name": "lora", "train.mixed_precision": "bf16", "train.epochs": 1}
    args = tiny_overrides(tiny_model, toy_csv, tmp_path, **over)
    done = subprocess.run([sys.executable, "-m", "tunelab", "run", *args], capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rec = read_record(tmp_path / "lora-seed0")
    assert rec.ok and rec.env.precision == "bf16" and rec.env.weights == "bfloat16, float32"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc")
def test_the_bf16_base_lets_go_of_the_checkpoint_file(tiny_llama, tmp_path):
    """Weights loaded from safetensors are views of the file's memory map: unless every one
    of them gets memory of its own, the map (and the fp32 pages a forward touched) stays
    resident next to the bf16 copies, and the bf16 base saves nothing. (A copy of the model
    of its own: other tests' models of the shared tiny Llama may still be alive.)"""
    import gc
    import shutil

    from tunelab.methods import build_method
    from tunelab.models import load_model, store_frozen

    folder = shutil.copytree(tiny_llama, tmp_path / "own")

    def mapped() -> bool:
        return any(f"{folder}/model.safetensors" in line for line in open("/proc/self/maps"))

    gc.collect()
    assert not mapped()
    model = build_method({"name": "lora"}).prepare(load_model(str(folder), ["a"], lm_head=True))
    assert mapped()  # loaded as views of the file (what the fix is about)
    model = store_frozen(model, torch.bfloat16)
    gc.collect()
    assert not mapped()
