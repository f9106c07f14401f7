"""Device and precision, decided once per run and written in its record (``env.device``,
``env.precision``, ``env.weights``): everything that computes with a run's model (its own
validation and test, the zero-shot baseline, predict, export's check, the plan's calibration)
runs under the same autocast, asked of the record, never of the machine it happens to be on.

Precisions are accelerate's names: ``no`` (fp32), ``bf16`` (bf16 autocast: matrix products
in bf16, fp32 master weights), ``fp16`` (fp16 autocast with dynamic loss scaling, for GPUs
without bf16: T4, V100). ``auto`` picks bf16 where the hardware computes it natively, fp16 on
a GPU without bf16, fp32 on a CPU without native bf16 (emulated bf16 is slower than fp32).
"""

from __future__ import annotations

import contextlib

import torch

from tunelab.errors import ConfigError
from tunelab.sharding import accelerate_without_fsdp

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

RELOAD_RTOL = {"no": 1e-6, "bf16": 1e-4, "fp16": 1e-4}
"""Relative tolerance of a reloaded run's loss against its record, per precision (accuracy
must match exactly). The reload computes the same function under the same autocast, but not
always by the same products: AdaLoRA's pruned ranks reload as smaller matrices, so a sum
over zeros goes by another kernel tiling and, rounded to the 8 (bf16) or 11 (fp16) mantissa
bits of a half-precision output, some activations come out one unit apart (the AdaLoRA case
of tests/test_peft_family.py in bf16 fails at 1e-6 and passes at this)."""


def cpu_bf16_flag() -> str | None:
    """The CPU feature that makes bf16 matmuls native here (Intel AMX or AVX512-BF16, as
    /proc/cpuinfo names them), or None where bf16 would be emulated (slower than fp32)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:  # not Linux: no cheap way to tell, keep fp32
        return None
    return next((flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags), None)


def device_type(setting: str = "auto") -> str:
    """``train.device`` -> "cpu" or "cuda": auto takes a CUDA GPU when there is one."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device=cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is "
            "False); use train.device=auto or cpu, or install a CUDA build of torch"
        )
    return setting


def choose_precision(setting: str, device: str) -> tuple[str, str]:
    """accelerate's mixed_precision ("no" | "bf16" | "fp16") for train.mixed_precision on a
    device type ("cpu" | "cuda"), and why. auto: bf16 autocast where the hardware computes
    bf16 natively (CUDA with bf16 support; a CPU with AMX or AVX512-BF16: full fine-tuning of
    MiniLM ran 125 examples/s in bf16 against 72 in fp32 on such a CPU, same test accuracy),
    fp16 with loss scaling on a GPU without bf16, fp32 on other CPUs."""
    cuda_here = device == "cuda" and torch.cuda.is_available()
    if setting == "fp16" and device == "cpu":
        raise ConfigError(
            "train.mixed_precision=fp16 is for CUDA GPUs without bf16 (fp16 autocast with loss "
            "scaling); on a CPU use train.mixed_precision=bf16 or no"
        )
    if setting == "bf16" and cuda_here and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"train.mixed_precision=bf16: this GPU ({torch.cuda.get_device_name()}) does not "
            f"compute bf16; use train.mixed_precision=fp16 (or auto, which picks it) or no"
        )
    if setting != "auto":
        return setting, f"train.mixed_precision={setting}"
    if device == "cuda":
        if cuda_here and not torch.cuda.is_bf16_supported():
            return "fp16", "auto: this GPU has no bf16, fp16 autocast with loss scaling"
        return "bf16", "auto: CUDA computes bf16 natively"
    flag = cpu_bf16_flag()
    if flag:
        return "bf16", f"auto: this CPU computes bf16 natively ({flag})"
    return "no", "auto: this CPU has no native bf16 (no AMX or AVX512-BF16), fp32 is faster"


def precision(setting: str, device: str | None = None) -> str:
    """accelerate's mixed_precision for train.mixed_precision on ``device`` (default: the
    device a run would take here)."""
    return choose_precision(setting, device or device_type())[0]


def accelerator(tc, trackers, project_dir):
    """The run's ``accelerate.Accelerator`` on the device and in the precision a TrainConfig
    asks for (``device_type``, ``choose_precision``). accelerate
    keeps the precision and device process-wide and refuses another ("AcceleratorState has
    already been initialized"), so a compare, a tune or a notebook could not run an fp32 run
    after a bf16 one: each run starts from a fresh state (a torchrun launch's process group
    is kept: its PartialState is reset only without one)."""
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device = device_type(tc.device)
    mode = choose_precision(tc.mixed_precision, device)[0]
    distributed = dist.is_available() and dist.is_initialized()
    AcceleratorState._reset_state(reset_partial_state=not distributed)
    # cpu=True also lets torchrun's CPU processes form a gloo group; FSDP is tunelab's own
    # (tunelab.sharding), on CPUs and GPUs alike
    with accelerate_without_fsdp():
        return Accelerator(mixed_precision=mode, log_with=trackers,
                           project_dir=str(project_dir), cpu=device == "cpu")  # fmt: skip


def autocast(mode: str, device: torch.device | str):
    """The autocast a run of precision ``mode`` computes under on ``device`` (a no-op
    context for fp32)."""
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if mode not in DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=DTYPES[mode])


def compute_dtype(mode: str) -> torch.dtype:
    """The dtype matrix products run in under precision ``mode``."""
    return DTYPES.get(mode, torch.float32)


def adapters_follow_autocast(model: torch.nn.Module) -> torch.nn.Module:
    """Every adapted linear layer (a peft tuner layer over ``nn.Linear`` or GPT-2's Conv1D)
    returns what the plain layer returns under autocast: the autocast dtype. LoRA does so
    itself; VeRA, LoHa, LoKr and OFT return fp32 (their update is computed outside autocast's
    matmuls), and models that mix a layer's output with its attention scores then fail
    (DeBERTa-v2: "value cannot be converted to type c10::BFloat16 without overflow" in
    masked_fill). A no-op outside autocast, so fp32 runs are unchanged."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft, no adapters
        return model
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer) or getattr(module, "_follows_autocast", False):
            continue
        base = module.get_base_layer()
        if isinstance(base, torch.nn.Linear) or type(base).__name__ == "Conv1D":
            module.register_forward_hook(_as_autocast)
            module._follows_autocast = True
    return model


def _as_autocast(module, args, output):
    if isinstance(output, torch.Tensor) and output.dtype == torch.float32:
        kind = output.device.type
        if torch.is_autocast_enabled(kind):
            return output.to(torch.get_autocast_dtype(kind))
    return output
