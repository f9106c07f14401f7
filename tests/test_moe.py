"""Mixture-of-experts models end to end, on tiny random models of each installed MoE family
(4 experts, 2 a token): LoRA on the expert weights trains, reloads to the same outputs and
exports to a plain model; the router stays frozen; total and active parameters and the
FLOPs of the experts a token runs, checked against torch's own FLOP counter; the plan's
activations against what autograd keeps in a real step; IA3 refused before anything loads."""

from __future__ import annotations

import json

import pytest
import torch

from tests.archs import MOE_FAMILIES, save_tiny, tiny_config, tokenizer
from tests.conftest import toy_rows, write_csv
from tests.test_anatomy import _Tok
from tests.test_corpus import cli
from tunelab.anatomy import experts
from tunelab.config import load_config
from tunelab.methods import build_method

pytestmark = pytest.mark.xdist_group("moe")
FAST = ("mixtral", "gpt_oss")  # make test keeps these two; the other families: extended


def families(slow: bool = False):
    """The MoE families: FAST ones in make test (and test-fast unless ``slow``), the others in
    make test-extended."""
    keep = (pytest.mark.slow,) if slow else ()
    return [pytest.param(f, marks=keep if f in FAST else (pytest.mark.slow, pytest.mark.extended))
            for f in MOE_FAMILIES]  # fmt: skip


@pytest.fixture(scope="session")
def moe_model(tmp_path_factory, smollm2_tokenizer):
    """family -> folder of its tiny MoE decoder (SmolLM2's tokenizer), built on first use."""
    root, tok, built = tmp_path_factory.mktemp("moe"), None, {}

    def folder(family: str) -> str:
        nonlocal tok
        if family not in built:
            tok = tok or tokenizer("decoder", smollm2_tokenizer)
            built[family] = str(save_tiny(family, root / family, tok))
        return built[family]

    return folder, str(write_csv(root / "toy.csv", toy_rows(160)))


def causal(family: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(family, _Tok()))


@pytest.mark.parametrize("family", families(slow=True))  # ~20 s: make test (test-fast in 2 min)
def test_lora_on_the_experts_trains_reloads_and_exports(family, moe_model, precision, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.test_peft_family import check_roundtrip
    from tunelab.inference import score_run
    from tunelab.results import read_metrics, read_record

    make, data = moe_model
    over = [f"model.name={make(family)}", f"data.dataset={data}", "task=causal-lm",
            "method.name=lora", "method.target_parameters=[experts]", "method.dropout=0",
            "train.epochs=2", "train.batch_size=8", "train.lr=1e-2", "tracker=none",
            "train.trend_points=0", f"train.mixed_precision={precision}",
            f"out_dir={tmp_path}"]  # fmt: skip
    rc, err = cli("run", *over)
    assert rc == 0, err
    run_dir = tmp_path / "lora-causal-lm-seed0"
    rec = read_record(run_dir)
    # the adapter reaches every MoE layer's fused expert weights; the router has none
    saved = json.loads((run_dir / "model" / "adapter_config.json").read_text())
    assert sorted(saved["target_parameters"]) == [
        "mlp.experts.down_proj",
        "mlp.experts.gate_up_proj",
    ]
    from tunelab.inference import load_run_model

    model, _ = load_run_model(run_dir)
    names = [n for n, p in model.named_parameters() if "lora_" in n]
    assert any(".experts." in n for n in names)
    assert not any(r in n for n in names for r in (".gate.", ".router."))
    assert 0 < rec.params.active < rec.params.total
    losses = [r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r]
    assert losses[-1] < losses[0], losses
    again = score_run(run_dir)
    assert again.accuracy == rec.test.accuracy
    cfg = load_config(None, over)
    check_roundtrip(run_dir, cfg, tmp_path, AutoModelForCausalLM)


def test_the_router_stays_frozen_under_every_linear_layer():
    """phimoe's router is a Linear subclass: [all-linear] must not adapt it."""
    model = build_method({"name": "lora", "target_modules": ["all-linear"]}).prepare(
        causal("phimoe")
    )
    adapted = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert adapted and not any("router" in n for n in adapted)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any("router" in n and "lora" not in n for n in trained)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_active_parameters_and_flops_follow_the_routing(family):
    """Active = total less the routed experts a token skips, counted by hand from the
    modules' shapes; the forward FLOPs per token against torch's FlopCounterMode on a real
    forward with the experts run one by one (eager: every matmul visible to the counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from tunelab.measure import count_params, flops_per_token

    model = causal(family).eval()
    moe = experts(model)
    assert (moe.n, moe.per_token) == (4, 2)
    routed = sum(p.numel() for n, p in model.named_parameters()
                 if ".mlp.experts." in n)  # fmt: skip
    counts = count_params(model)
    assert counts["active"] == counts["total"] - routed // 2
    model.config._experts_implementation = "eager"
    tokens = torch.randint(3, 200, (48, 1))  # one-token rows: no attention-score FLOPs
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=tokens)
    measured = counter.get_total_flops() / tokens.numel()
    # a head tied to the embeddings is left out of the 6N count with them (embeddings are
    # lookups): take its matmul out of the measurement too
    tied = model.config.tie_word_embeddings
    measured -= 2 * model.config.vocab_size * model.config.hidden_size if tied else 0
    planned = flops_per_token(model)["forward"]
    # routing is uneven (an expert may get more or fewer tokens than 2/4 of them), yet every
    # token runs exactly 2 experts: the totals agree (the router's and norms' few FLOPs aside)
    assert 0.97 <= planned / measured <= 1.03, (planned, measured)


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("family", FAST)
def test_the_plan_traces_what_a_real_step_keeps(family, method, monkeypatch):
    """The fused experts under fake tensors (through transformers' fallback grouped matmul)
    keep the same activations as a real forward of the same shape; and with that route
    taken away (the op fake tensors cannot follow), the real-copies fallback answers too."""
    import contextlib

    from tunelab import measure
    from tunelab import planning as plan
    from tunelab.planning import grouped

    config = tiny_config(family, _Tok())
    t = plan.trace(config, "causal-lm", {"name": method}, 4, 24, False, False)
    assert t["activations_from"] == "fake-tensor trace"
    torch.manual_seed(0)
    real = build_method({"name": method}).prepare(causal(family))
    batch = plan.training_batch(config, "causal-lm", 4, 24)
    measured = measure.saved_activation_bytes(real, batch)  # torch's own grouped matmul
    assert abs(t["activations"] - measured) <= 64, (t["activations"], measured)  # offsets
    monkeypatch.setattr(grouped, "traceable", contextlib.nullcontext)
    t2 = plan.trace(config, "causal-lm", {"name": method}, 4, 24, False, False)
    assert t2["activations_from"].startswith("real 1- and 2-layer copies"), t2["activations_from"]
    assert "BF16" in t2["activations_from"]  # why: the meta kernel's dtype check, said
    assert abs(t2["activations"] - measured) <= 0.01 * measured


def test_ia3_is_refused_before_anything_loads(moe_model, tmp_path):
    make, data = moe_model
    args = [f"model.name={make('mixtral')}", f"data.dataset={data}", "task=causal-lm",
            "method.name=ia3", f"out_dir={tmp_path}", "tracker=none"]  # fmt: skip
    rc, err = cli("run", *args)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "ia3 on mixtral" in lines[0], err
    assert "lora" in lines[0] and "experts" in lines[0]
    assert not any(tmp_path.iterdir())  # no run folder, no record: refused up front


def test_expert_targets_are_refused_where_they_cannot_apply():
    from tunelab.anatomy import NotApplicable
    from tunelab.errors import ConfigError

    with pytest.raises(NotApplicable, match="no fused routed expert weights"):
        build_method({"name": "lora", "target_parameters": ["experts"], "dropout": 0}).prepare(
            causal("llama")
        )
    with pytest.raises(ConfigError, match="method.dropout=0"):
        build_method({"name": "lora", "target_parameters": ["experts"]}).prepare(causal("mixtral"))


def test_a_comparison_refuses_a_method_the_model_cannot_take_before_any_run(moe_model, tmp_path):
    make, data = moe_model
    rc, err = cli("compare", "--methods", "lora,ia3", "--out", str(tmp_path),
                  f"model.name={make('mixtral')}", f"data.dataset={data}", "task=causal-lm",
                  "tracker=none")  # fmt: skip
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "ia3 on mixtral" in lines[0], err
    assert not list(tmp_path.glob("*-seed0"))  # lora did not run first
