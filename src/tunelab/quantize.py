"""QLoRA's base (``model.quantize=4bit``): the frozen model's linear layers loaded in 4-bit
NormalFloat with double quantisation, computed in the run's precision, the adapters and the
task head in fp32 (Dettmers et al., 2023, "QLoRA", arXiv:2305.14314), through transformers'
bitsandbytes integration and peft's ``prepare_model_for_kbit_training``.

Only for methods that freeze the base and save an adapter (LoRA, AdaLoRA, IA3, VeRA, prompt
tuning...): a method that trains base weights cannot train 4-bit ones. The layers left in
full precision are the ones transformers leaves by default (the output embedding, tied
weights) plus the task head tunelab trains (``anatomy.head_modules``). The device must run
bitsandbytes' 4-bit kernels: CUDA, and CPUs from bitsandbytes 0.48 on (its CPU backend); a
device it cannot serve is refused before the model loads, with bitsandbytes' own reason.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.precision import compute_dtype

# bytes per quantised weight: 4 bits, an 8-bit absmax per block of 64 and (double
# quantisation) an fp32 absmax per 256 of those (QLoRA section 3; bitsandbytes' defaults)
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)


def quantization(mc, method, mixed_precision: str, device: torch.device):
    """transformers' ``BitsAndBytesConfig`` for ``mc.quantize`` (None for "none"); refuses a
    method that trains base weights, a missing bitsandbytes, and a device it cannot serve."""
    if mc.quantize == "none":
        return None
    check_method(mc, method)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"model.quantize={mc.quantize} needs bitsandbytes: pip install 'tunelab[qlora]' "
            f"(bitsandbytes>=0.48), or model.quantize=none"
        ) from None
    from transformers import BitsAndBytesConfig

    compute = compute_dtype(mixed_precision)  # the run's precision: 4-bit layers multiply in it
    probe(device, compute)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=torch.uint8,
        llm_int8_skip_modules=list(kept_modules(mc)),
    )


def check_method(mc, method) -> None:
    """Refuse a method that trains base weights: 4-bit weights cannot be trained."""
    if mc.quantize != "none" and not method.saves_adapter:
        raise ConfigError(
            f"model.quantize={mc.quantize} stores the frozen base in 4 bits for adapter methods "
            f"(QLoRA); method {method.name} trains the base's own weights: use an adapter method "
            f"(lora, adalora, ia3, vera, prompt...) or model.quantize=none"
        )


def probe(device: torch.device, compute: torch.dtype) -> None:
    """One 4-bit layer quantised and run on ``device``: bitsandbytes' reason if it cannot."""
    import bitsandbytes as bnb

    try:
        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=compute, quant_type="nf4").to(device)
        layer(torch.zeros(1, 64, device=device, dtype=compute))
    except Exception as e:
        raise ConfigError(
            f"model.quantize=4bit: bitsandbytes {bnb.__version__} cannot run 4-bit layers on "
            f"{device.type} ({type(e).__name__}: {str(e)[:200]}); use a CUDA GPU or "
            f"bitsandbytes>=0.48 (CPU backend), or model.quantize=none"
        ) from None


def kept_modules(mc) -> set[str]:
    """Module names bitsandbytes must leave in full precision: transformers' defaults (output
    embedding, tied weights, last module) and the task head, found on a weightless build of
    the model's config (the same for classification and causal-LM loading)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.quantizers.base import get_keys_to_not_convert

    from tunelab.anatomy import head_modules
    from tunelab.models import resolve

    config = AutoConfig.from_pretrained(resolve(mc.name), trust_remote_code=mc.trust_remote_code)
    kept: set[str] = set()
    for auto in (AutoModelForSequenceClassification, AutoModelForCausalLM):
        try:
            with init_empty_weights():
                model = auto.from_config(config, trust_remote_code=mc.trust_remote_code)
        except (ValueError, KeyError):  # an architecture without this head class
            continue
        kept |= set(get_keys_to_not_convert(model)) | set(head_modules(model))
    return kept


def quantized_params(model: nn.Module) -> int:
    """How many weights bitsandbytes stores in 4 bits in a quantised run of ``model`` (built
    without quantisation, the method applied): the frozen linear-layer weights outside the
    kept modules, for ``plan``."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {id(m.weight) for m in (embed, out) if m is not None and hasattr(m, "weight")}
    return sum(
        m.weight.numel()
        for m in model.modules()
        if (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")  # GPT-2's
        and not m.weight.requires_grad
        and id(m.weight) not in skip
    )
