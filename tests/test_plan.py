"""`tunelab plan`: estimates from a config alone, checked against published parameter counts
and against what real tensors, a real optimizer step and autograd hold."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_bert_config
from tunelab import fast, measure
from tunelab import planning as plan
from tunelab.cli import main
from tunelab.methods import build_method
from tunelab.optim import make_optimizer


def llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(
        vocab_size=500,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    return LlamaConfig(**{**base, **kw})


def run_plan(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["plan", *args])
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    "name, task, published",
    [
        # BertModel 109,482,240 / 335,141,888 (the model cards' 110M / 340M) + a 2-way head
        ("bert-base", "classification", 109_482_240 + 768 * 2 + 2),
        ("bert-large", "classification", 335_141_888 + 1024 * 2 + 2),
        ("llama-2-7b", "causal-lm", 6_738_415_616),  # Touvron et al. 2023, "7B"
    ],
)
def test_parameter_counts_from_config_only_folders(tmp_path, name, task, published):
    from transformers import BertConfig

    configs = {
        "bert-base": BertConfig(),
        "bert-large": BertConfig(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
        ),
        "llama-2-7b": llama_config(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            architectures=["LlamaForCausalLM"],
        ),
    }
    configs[name].save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no weights anywhere
    config = plan.model_config(str(tmp_path), task, 2)
    t = plan.trace(config, task, {"name": "full"}, 2, 16, bf16=False, fast_cpu=False)
    assert t["total"] == published
    # fp32 AdamW: 4 (weights) + 4 (gradients) + 8 (two moments) = 16 bytes per parameter
    assert t["gradients"] == 4 * published
    assert t["optimizer"] - 8 * published < 4 * 1000  # + one float32 step per tensor
    assert 0 <= t["weights"] - 4 * published < 2**20  # + buffers (position ids, rotary)


def real_model(config, task: str, method: str):
    torch.manual_seed(0)
    model = build_method({"name": method}).prepare(plan.build(config, task))
    fast.install(model)
    return model


@pytest.mark.parametrize(
    "method",
    ["full", "freeze", "bitfit", "lora", "prompt", "ia3"]
    + ["adalora", "vera", "loha", "lokr", "oft", "lntuning"],
)
def test_state_bytes_are_exact(method):
    """Weights, gradients and fused AdamW state against the tensors after a real step."""
    config = tiny_bert_config(num_labels=2)
    model = real_model(config, "classification", method)
    m = build_method({"name": method})
    opt = make_optimizer(m.param_groups(model, 1e-3, 0.01), 1e-3)
    model(**plan.training_batch(config, "classification", 4, 12)).loss.backward()
    opt.step()
    grads = sum(
        p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None
    )
    state = sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    t = plan.trace(config, "classification", {"name": method}, 4, 12, bf16=False, fast_cpu=True)
    assert t["gradients"] == grads
    assert t["optimizer"] == state
    assert t["weights"] == plan.state_bytes(model)["weights"]
    assert t["trainable"] == measure.count_params(model)["trainable"]


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("method", ["full", "lora", "prompt"])
def test_activations_match_what_autograd_saves(arch, method, bf16):
    """The fake trace against a real forward of the same model, at two batch shapes."""
    if arch == "bert":
        config, task = tiny_bert_config(num_labels=2), "classification"
    else:
        config, task = llama_config(), "causal-lm"
    for batch, length in ((4, 16), (2, 48)):
        model = real_model(config, task, method)
        data = plan.training_batch(config, task, batch, length)
        real = measure.saved_activation_bytes(model, data, "cpu" if bf16 else None)
        t = plan.trace(config, task, {"name": method}, batch, length, bf16, fast_cpu=True)
        assert real > 0
        assert abs(t["activations"] - real) <= 0.15 * real, (batch, length, t, real)


def test_plan_minilm_prints_every_method_and_a_suggestion(tmp_path):
    rc, out, err = run_plan("--model", "minilm", "--out", str(tmp_path), "--methods", "full,lora")
    assert rc == 0, err
    assert "full" in out and "lora" in out and "suggestion:" in out
    rc, out, _ = run_plan(
        "--model", "minilm", "--out", str(tmp_path), "--methods", "full,lora,prompt", "--json"
    )
    p = json.loads(out)
    full, lora, prompt = p["estimates"]
    assert full["trainable"] == full["total"] > 22e6
    assert lora["trainable"] < 0.01 * lora["total"]
    assert full["optimizer"] > 100 * lora["optimizer"]
    assert full["peak"] > lora["peak"] and full["flops_per_example"] > lora["flops_per_example"]
    assert p["longest"] <= p["max_length"] and p["mean_tokens"] < p["longest"]


def test_plan_fits_budgets_and_says_what_to_change(tmp_path):
    common = ("--model", "minilm", "--out", str(tmp_path), "--methods", "full,lora", "--json")
    # a budget between the two process peaks' high ends (what fits compares)
    run_plan(*common)  # (the base is this process's resident set: let its caches fill first)
    est = json.loads(run_plan(*common)[1])["estimates"]
    peaks = {e["method"]: e["process"]["high"] for e in est}
    for e in est:  # the range holds the tensors and the runtime below the model
        pr = e["process"]
        assert pr["base"] < pr["low"] <= pr["expected"] <= pr["high"]
        assert pr["expected"] >= pr["base"] + max(e["peak"], e["eval_peak"])
    assert peaks["lora"] < peaks["full"]
    between = (peaks["lora"] + peaks["full"]) // 2
    p = json.loads(run_plan(*common, "--memory", f"{between // 2**20}MB")[1])
    fits = {e["method"]: e["fits_memory"] for e in p["estimates"]}
    assert fits == {"full": False, "lora": True}
    assert p["suggestion"].startswith("lora")
    p = json.loads(run_plan(*common, "--memory", "50MB", "--time", "1h")[1])
    assert "nothing fits" in p["suggestion"] and "batch" in p["suggestion"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--memory", "lots"), "--memory 'lots'"),
        (("--time", "2 fortnights"), "--time"),
        (("--methods", "full,dora"), "unknown method"),
        (("--examples", "0"), "--examples"),
        (("--model", "/nonexistent/folder"), "cannot read the config"),
    ],
)
def test_plan_bad_input_is_one_line(tmp_path, args, needle):
    rc, _, err = run_plan("--out", str(tmp_path), *args)
    assert rc == 2 and needle in err and "Traceback" not in err


def test_parse_units():
    assert plan.parse_size("16GB") == plan.parse_size("16GiB") == 16 * 2**30
    assert plan.parse_size("512m") == 512 * 2**20
    assert plan.parse_duration("1h30m") == 5400
    assert plan.parse_duration("45") == 45


def test_auto_precision_follows_the_cpu(monkeypatch):
    from tunelab import precision

    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: "amx_bf16")
    assert precision.choose_precision("auto", "cpu")[0] == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: None)
    mode, why = precision.choose_precision("auto", "cpu")
    assert mode == "no" and "no native bf16" in why
    assert precision.choose_precision("no", "cpu")[0] == "no"


# Published config.json files (no weights, no tokenizer), as the Hub repositories hold them:
# mistralai/Mistral-7B-v0.1, Qwen/Qwen2.5-0.5B, openai-community/gpt2,
# microsoft/Phi-3-mini-4k-instruct, google/gemma-2b, and the families people fine-tune in 2025:
# meta-llama/Llama-3.1-8B-Instruct, -3.2-1B-Instruct, -3.2-3B-Instruct, -3.3-70B-Instruct (eos a
# list), Qwen/Qwen2.5-7B-Instruct, Qwen3-0.6B, Qwen3-8B, Qwen3-30B-A3B (MoE),
# mistralai/Mixtral-8x7B-v0.1 (MoE), Mistral-7B-v0.3, google/gemma-2-2b, gemma-2-9b,
# gemma-3-1b-it (eos a list), microsoft/phi-4, allenai/OLMo-2-1124-7B, OLMoE-1B-7B-0924 (MoE),
# HuggingFaceTB/SmolLM3-3B, deepseek-ai/DeepSeek-V2-Lite (MoE, multi-head latent attention),
# openai/gpt-oss-20b (MoE, attention sinks). Counts: the repositories' safetensors totals
# (total_size / bytes per parameter), each also re-derived by hand from the config's shapes in
# test_published_counts_follow_from_the_shapes (an independent check of these numbers).
PUBLISHED = Path(__file__).parent / "data" / "published"
PUBLISHED_PARAMS = {
    "gpt2": 124_439_808,
    "qwen2.5-0.5b": 494_032_768,
    "gemma-2b": 2_506_172_416,
    "phi-3-mini": 3_821_079_552,
    "mistral-7b": 7_241_732_096,
    "llama-3.1-8b-instruct": 8_030_261_248,
    "llama-3.2-1b-instruct": 1_235_814_400,
    "llama-3.2-3b-instruct": 3_212_749_824,
    "llama-3.3-70b-instruct": 70_553_706_496,
    "qwen2.5-7b-instruct": 7_615_616_512,
    "qwen3-0.6b": 596_049_920,
    "qwen3-8b": 8_190_735_360,
    "qwen3-30b-a3b": 30_532_122_624,
    "mixtral-8x7b": 46_702_792_704,
    "mistral-7b-v0.3": 7_248_023_552,
    "gemma-2-2b": 2_614_341_888,
    "gemma-2-9b": 9_241_705_984,
    "gemma-3-1b-it": 999_885_952,
    "phi-4": 14_659_507_200,
    "olmo-2-7b": 7_298_617_344,
    "olmoe-1b-7b": 6_919_161_856,
    "smollm3-3b": 3_075_098_624,
    "deepseek-v2-lite": 15_706_484_224,
    "gpt-oss-20b": 20_914_757_184,
}
# Mixtures of experts: (experts, run per token, active parameters as the model card states
# them, whether that figure leaves the input embedding out). Mistral and Qwen count every
# parameter a token's forward holds (embeddings included); DeepSeek and OpenAI leave the
# input embedding (a lookup) out.
PUBLISHED_MOE = {
    "mixtral-8x7b": (8, 2, 12.9e9, False),
    "qwen3-30b-a3b": (128, 8, 3.3e9, False),
    "olmoe-1b-7b": (64, 8, 1.3e9, False),
    "deepseek-v2-lite": (64, 6, 2.4e9, True),
    "gpt-oss-20b": (32, 4, 3.6e9, True),
}
FAST_PUBLISHED = ("gpt2", "phi-3-mini", "llama-3.2-1b-instruct", "mixtral-8x7b")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n in FAST_PUBLISHED else pytest.mark.slow)
     for n in PUBLISHED_PARAMS],
)  # fmt: skip
def test_plan_from_a_published_config_alone(name, tmp_path):
    folder = PUBLISHED / name
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    config = json.loads((folder / "config.json").read_text())
    rc, out, err = run_plan(
        "--model", str(folder), "task=causal-lm", "--methods", "full", "--json",
        "--out", str(tmp_path), "--batch-size", "2", "--max-length", "64",
    )  # fmt: skip
    assert rc == 0, err
    p = json.loads(out)
    full = p["estimates"][0]
    assert not full["error"] and full["total"] == PUBLISHED_PARAMS[name]  # exact
    # fp32 weights + gradients + AdamW's two moments: 16 bytes a parameter, whatever dtype
    # the checkpoint is stored in (most of these configs say bfloat16)
    per_param = (full["weights"] + full["gradients"] + full["optimizer"]) / full["total"]
    assert 16.0 <= per_param < 16.0001
    assert p["weights_dtype"] == "float32"
    assert p["stored_dtype"] == config.get("torch_dtype", "")
    assert (p["longest"], p["mean_tokens"]) == (64, 64.0) and "no tokenizer" in p["tokens_from"]
    assert full["activations"] > 0 and full["flops_per_example"] > 0
    if name not in PUBLISHED_MOE:
        assert p["experts"] is None and full["active"] == full["total"]
        return
    n, k, stated, no_embedding = PUBLISHED_MOE[name]
    assert p["experts"] == [n, k]
    total, routed = moe_shapes(config)
    assert full["active"] == total - routed * (n - k) // n  # the experts a token skips
    embedding = config["vocab_size"] * config["hidden_size"]
    active = full["active"] - (embedding if no_embedding else 0)
    assert abs(active / stated - 1) < 0.03, (active, stated)  # the card's rounded figure
    # FLOPs by the experts a token runs: 6 x the active non-embedding weights per token
    assert full["flops_per_example"] == 64 * 6 * (full["active"] - embedding)


def moe_shapes(c: dict) -> tuple[int, int]:
    """(total, routed-expert) parameters of a published MoE decoder, by hand from its shapes."""
    h, v, layers = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    d = c.get("head_dim") or h // heads
    n = c.get("num_local_experts") or c.get("num_experts") or c["n_routed_experts"]
    if c["model_type"] == "deepseek_v2":  # multi-head latent attention, one dense layer first
        qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
        attn = (h * heads * qk + h * (c["kv_lora_rank"] + c["qk_rope_head_dim"])
                + c["kv_lora_rank"] + c["kv_lora_rank"] * heads * (c["qk_nope_head_dim"]
                + c["v_head_dim"]) + heads * c["v_head_dim"] * h)  # fmt: skip
        m = c["moe_intermediate_size"]
        expert = 3 * h * m
        shared = c["n_shared_experts"] * expert
        dense = 3 * h * c["intermediate_size"]
        moe_layers = layers - c["first_k_dense_replace"]
        body = layers * (attn + 2 * h) + moe_layers * (n * expert + shared + n * h) + dense
        return 2 * v * h + body + h, moe_layers * n * expert
    bias = c.get("attention_bias", False)
    attn = h * heads * d + 2 * h * kv * d + heads * d * h
    attn += (heads * d + 2 * kv * d + h) if bias else 0
    attn += heads if c["model_type"] == "gpt_oss" else 0  # attention sinks
    attn += 2 * d if c["model_type"] == "qwen3_moe" else 0  # q and k norms
    attn += (heads * d + kv * d) if c["model_type"] == "olmoe" else 0  # q and k norms, full width
    m = c.get("moe_intermediate_size") or c["intermediate_size"]
    expert = 3 * h * m + ((2 * m + h) if c["model_type"] == "gpt_oss" else 0)  # + biases
    router = n * h + (n if c["model_type"] == "gpt_oss" else 0)
    body = layers * (attn + n * expert + router + 2 * h)
    return 2 * v * h + body + h, layers * n * expert


@pytest.mark.parametrize("name", list(PUBLISHED_MOE))
def test_published_counts_follow_from_the_shapes(name):
    """The published totals above, re-derived by hand from each MoE config's shapes (no
    transformers, no tunelab), and the active count of a token from them: total less the
    routed experts it does not run."""
    c = json.loads((PUBLISHED / name / "config.json").read_text())
    total, routed = moe_shapes(c)
    assert total == PUBLISHED_PARAMS[name]
    n, k, stated, no_embedding = PUBLISHED_MOE[name]
    embedding = c["vocab_size"] * c["hidden_size"] if no_embedding else 0
    active = total - routed * (n - k) // n - embedding
    assert abs(active / stated - 1) < 0.03, (active, stated)  # 2 significant digits


def test_untraceable_forward_falls_back_to_real_shallow_copies():
    """DeBERTa left to pick its own loss calls nonzero (its output shape depends on the
    data), which fake tensors cannot follow: the activations then come from real 1- and
    2-layer copies scaled to the depth, and match a real forward of the whole model."""
    from transformers import AutoModelForSequenceClassification

    from tests.archs import tiny_config
    from tests.test_anatomy import _Tok
    from tunelab import measure

    config = tiny_config("deberta-v2", _Tok())
    config.num_hidden_layers, config.num_labels, config.problem_type = 4, 2, None
    t = plan.trace(config, "classification", {"name": "lora"}, 4, 24, False, False)
    assert t["activations_from"].startswith("real 1- and 2-layer copies scaled to 4 layers")
    assert "nonzero" in t["activations_from"]
    torch.manual_seed(0)
    real = build_method({"name": "lora"}).prepare(
        AutoModelForSequenceClassification.from_config(config)
    )
    batch = plan.training_batch(config, "classification", 4, 24)
    measured = measure.saved_activation_bytes(real, batch)
    assert abs(t["activations"] - measured) <= 0.001 * measured


@pytest.mark.parametrize("rows", [8, 48])
def test_the_evaluation_peak_matches_what_label_word_scoring_allocates(rows, monkeypatch):
    """The plan's evaluation working set for a decoder scoring label words, against the
    allocations of the real scoring (tasks/label_words.py) on a random Llama; with 48 rows
    the cache budget splits the batch into chunks, which the plan must follow."""
    from transformers import AutoModelForCausalLM

    from tunelab.tasks import label_words

    config = llama_config(hidden_size=64, intermediate_size=128, num_hidden_layers=4)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    length = 96
    per_row = length * label_words.cache_bytes_per_token(model)
    monkeypatch.setattr(label_words, "CACHE_BYTES", 16 * per_row)  # 16 rows a chunk
    ids = torch.randint(1, 500, (rows, length))
    starts = torch.full((rows,), length)
    words = [[5, 6], [7, 8, 9], [10]]
    measured = measure.allocation_peak(lambda: label_words.word_logprobs(model, ids, starts, words))
    planned = plan.eval_working_set(config, "causal-lm", rows, length, word_tokens=3)
    assert 0.7 <= planned / measured <= 1.5, (planned, measured)


def test_a_plan_that_fits_training_but_not_evaluation_does_not_fit(tmp_path):
    # (a decoder's label-word evaluation is bounded by its cache chunks; a classifier's
    # evaluation batch runs whole)
    args = ["--methods", "lora", "--json", "--out", str(tmp_path),
            "train.eval_batch_size=8192"]  # fmt: skip
    rc, out, err = run_plan(*args)
    assert rc == 0, err
    e = json.loads(out)["estimates"][0]
    assert e["eval_peak"] > e["peak"]  # 8192 rows of one layer's activations
    between = (e["peak"] + e["eval_peak"]) / 2 / 2**30
    rc, out, err = run_plan(*args, "--memory", f"{between:.3f}GiB")
    assert rc == 0, err
    assert json.loads(out)["estimates"][0]["fits_memory"] is False


def test_plan_counts_a_4bit_base_and_refuses_full(precision, tmp_path):
    """model.quantize=4bit from Phi-3-mini's published config alone: LoRA's weights are the
    unquantised plan's less every frozen linear weight's bytes in the run's base dtype (fp32,
    or bf16 under bf16 autocast: model.base_dtype=auto) less NF4_BYTES; full fine-tuning is
    refused in its row with the reason."""
    from tunelab.quantize import NF4_BYTES

    common = ("--model", str(PUBLISHED / "phi-3-mini"), "task=causal-lm", "--json",
              "--out", str(tmp_path), "--batch-size", "1", "--max-length", "32",
              f"train.mixed_precision={precision}")  # fmt: skip
    rows = {}
    for q in ("none", "4bit"):
        rc, out, err = run_plan(*common, "--methods", "full,lora", f"model.quantize={q}")
        assert rc == 0, err
        rows[q] = {e["method"]: e for e in json.loads(out)["estimates"]}
    plain, nf4 = rows["none"]["lora"], rows["4bit"]["lora"]
    assert "method full trains the base's own weights" in rows["4bit"]["full"]["error"]
    # Phi-3-mini: 32 blocks of qkv (3072 -> 9216), o (3072 -> 3072), gate_up (3072 -> 16384)
    # and down (8192 -> 3072); the embeddings and the untied LM head stay full precision
    linear = 32 * 3072 * (9216 + 3072 + 16384 + 8192)
    frozen = 2 if precision == "bf16" else 4  # bytes a frozen linear weight is stored in
    assert plain["weights"] - nf4["weights"] == round(linear * (frozen - NF4_BYTES))
    assert nf4["peak"] < plain["peak"] and nf4["trainable"] == plain["trainable"]


def test_the_process_range_inverts_to_the_room_for_tensors():
    """fits compares the process peak's high end with the budget; the largest batch comes
    from the same model read backwards (plan.process.tensor_room)."""
    from tunelab.planning.process import process_peak, tensor_room

    for device in ("cpu", "cuda"):
        room = tensor_room(device, 16 * 2**30, 2**30, 400 * 2**20)
        assert room > 2**30
        at = process_peak(device, room, 2**30, 400 * 2**20)
        assert abs(at.high - 16 * 2**30) < 2**20  # exactly the budget, to a MiB
        assert at.low <= at.expected <= at.high
