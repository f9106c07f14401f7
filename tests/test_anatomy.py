"""The parts of a model, found from the model: block stacks, projection roles, heads and
embedding widths of 13 families, checked against what each family's code defines (by hand,
from transformers' modeling files), and the methods' targets that follow from them."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from tests.archs import FAMILIES, tiny_config
from tunelab.anatomy import NotApplicable, anatomy
from tunelab.errors import ConfigError
from tunelab.methods import build_method
from tunelab.models import is_causal_lm

# family -> (stack path, LoRA's default targets (block-relative), heads of the classifier)
EXPECTED = {
    "bert": ("bert.encoder.layer", {"attention.self.query", "attention.self.value"}, ("classifier",)),
    "roberta": ("roberta.encoder.layer", {"attention.self.query", "attention.self.value"}, ("classifier",)),
    "distilbert": ("distilbert.transformer.layer", {"attention.q_lin", "attention.v_lin"}, ("pre_classifier", "classifier")),
    "electra": ("electra.encoder.layer", {"attention.self.query", "attention.self.value"}, ("classifier",)),
    "albert": ("albert.encoder.albert_layer_groups", {"albert_layers.0.attention.query", "albert_layers.0.attention.value"}, ("classifier",)),
    "deberta-v2": ("deberta.encoder.layer", {"attention.self.query_proj", "attention.self.value_proj"}, ("pooler", "classifier")),
    "modernbert": ("model.layers", {"attn.Wqkv"}, ("head", "classifier")),
    "gpt2": ("transformer.h", {"attn.c_attn"}, ("score",)),
    "llama": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    "qwen2": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    "mistral": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    "phi3": ("model.layers", {"self_attn.qkv_proj"}, ("score",)),
    "gemma": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    "mpnet": ("mpnet.encoder.layer", {"attention.attn.q", "attention.attn.v"}, ("classifier",)),
    "xlm-roberta": ("roberta.encoder.layer", {"attention.self.query", "attention.self.value"}, ("classifier",)),
    "ernie": ("ernie.encoder.layer", {"attention.self.query", "attention.self.value"}, ("classifier",)),
    "qwen3": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    "gemma2": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    "gemma3_text": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    "olmo2": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    "smollm3": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    "granite": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ()),  # no classifier
    "mixtral": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    "qwen3_moe": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    "olmoe": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ()),  # no classifier
    "phimoe": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
    # multi-head latent attention: keys and values come from one low-rank kv_a/kv_b pair, so
    # peft's table (q_proj, v_proj) finds the query only
    "deepseek_v2": ("model.layers", {"self_attn.q_proj"}, ("score",)),
    "gpt_oss": ("model.layers", {"self_attn.q_proj", "self_attn.v_proj"}, ("score",)),
}  # fmt: skip


class _Tok:  # the ids tiny_config needs, without loading a tokenizer
    pad_token_id, bos_token_id, eos_token_id, cls_token_id, sep_token_id = 0, 1, 2, 1, 2

    def __len__(self):
        return 300


def classifier(family: str):
    """The family's sequence classifier; its causal LM where transformers has no classifier
    for it (then no head: EXPECTED's heads are empty)."""
    torch.manual_seed(0)
    config = tiny_config(family, _Tok())
    config.num_labels = 2
    if not EXPECTED[family][2]:
        return AutoModelForCausalLM.from_config(config)
    return AutoModelForSequenceClassification.from_config(config)


def test_every_family_is_expected():
    assert set(EXPECTED) == set(FAMILIES)


@pytest.mark.parametrize("family", list(EXPECTED))
def test_stack_roles_and_heads(family):
    stack, lora, heads = EXPECTED[family]
    model = classifier(family)
    a = anatomy(model)
    assert (a.stack, a.heads) == (stack, heads)
    assert a.n_blocks == (1 if family == "albert" else 2) and a.n_layers == 2
    assert a.shared == (family == "albert")
    emb = model.get_input_embeddings().weight.shape[1]
    assert a.embed_dim == emb == (16 if family in ("electra", "albert") else 32)
    # every block parameter gets its block's depth; head parameters are the head's
    for name, _ in model.named_parameters():
        i = a.index(name)
        assert (i is not None) == name.startswith(stack + "."), name
        assert a.is_head(name) == any(name.startswith(h + ".") for h in heads), name
    # LoRA's default targets, and nothing outside the blocks
    peft_model = build_method({"name": "lora"}).prepare(model)
    adapted = {n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    relative = {n.split(f"{stack}.0.", 1)[1] for n in adapted if f"{stack}.0." in n}
    assert relative == lora
    assert len(adapted) == len(lora) * a.n_blocks


@pytest.mark.parametrize("family", [f for f, (_, _, heads) in EXPECTED.items() if heads])
def test_every_head_module_trains_under_peft_methods(family):
    from tunelab.anatomy import experts

    moe = experts(classifier(family))  # IA3 cannot rescale routed experts: refused there
    for method in ("lora", "prompt") if moe else ("lora", "ia3", "prompt"):
        model = build_method({"name": method}).prepare(classifier(family))
        a = anatomy(model)
        head = [p for n, p in model.named_parameters() if a.is_head(n) and "modules_to_save" in n]
        assert head and all(p.requires_grad for p in head), (family, method)


@pytest.mark.parametrize("family", ["distilbert", "electra", "albert", "modernbert", "phi3"])
def test_ia3_finds_keys_values_and_the_feedforward_output(family):
    model = build_method({"name": "ia3"}).prepare(classifier(family))
    scaled = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "ia3_l")}
    ff = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
          if hasattr(m, "ia3_l") and m.is_feedforward}  # fmt: skip
    expected_ff = {"distilbert": {"lin2"}, "electra": {"dense"}, "albert": {"ffn_output"},
                   "modernbert": {"Wo"}, "phi3": {"down_proj"}}[family]  # fmt: skip
    assert ff == expected_ff
    assert scaled - ff  # and the attention's keys/values (or the fused qkv)


def test_prompt_tokens_take_the_embedding_width():
    for family in ("electra", "albert", "distilbert"):
        model = build_method({"name": "prompt"}).prepare(classifier(family))
        width = model.prompt_encoder["default"].embedding.weight.shape[1]
        assert width == anatomy(model).embed_dim


def test_layer_methods_refuse_shared_blocks_with_the_reason():
    for method in ("freeze", "llrd"):
        with pytest.raises(NotApplicable, match=rf"{method} on albert: .* share"):
            build_method({"name": method}).prepare(classifier("albert"))


def test_lora_refuses_user_targets_inside_the_head():
    with pytest.raises(ConfigError, match="pre_classifier"):
        build_method({"name": "lora", "target_modules": ["pre_classifier"]}).prepare(
            classifier("distilbert")
        )


def test_all_linear_stays_inside_the_blocks():
    model = build_method({"name": "lora", "target_modules": ["all-linear"]}).prepare(
        classifier("distilbert")
    )
    adapted = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert len(adapted) == 2 * 6 and all(".transformer.layer." in n for n in adapted)


def test_flops_count_shared_blocks_once_per_layer():
    from tunelab.measure import flops_per_token

    model = classifier("albert")
    a = anatomy(model)
    block = sum(p.numel() for n, p in model.named_parameters() if a.index(n) is not None)
    rest = sum(p.numel() for n, p in model.named_parameters() if 0 < a.depth(n) > a.n_blocks)
    assert flops_per_token(model)["forward"] == 2 * (a.n_layers * block + rest)


def test_gpt2_lm_head_model_is_a_causal_lm():
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", _Tok()))
    assert type(model).__name__ == "GPT2LMHeadModel" and is_causal_lm(model)
    assert not is_causal_lm(classifier("gpt2"))
