"""How the parameters move: precision, AdamW over the method's parameter groups, the
learning-rate schedule and the step budget."""

from __future__ import annotations

import math

import torch

from tunelab.batches import global_batches
from tunelab.config import RunConfig, TrainConfig


def make_optimizer(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW, fused where torch has a fused kernel for the device (CPU and CUDA in torch
    >= 2.4: one kernel for the whole update, +8% examples/s on full fine-tuning of MiniLM on
    2 CPU cores), else the multi-tensor (foreach) implementation."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, foreach=True)


def make_scheduler(optimizer, cfg: RunConfig, total_steps: int):
    from transformers import get_scheduler

    kind = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    warmup = math.ceil(cfg.train.warmup * total_steps)  # as transformers' Trainer rounds it
    return get_scheduler(
        kind[cfg.train.schedule], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )


def step_budget(tc: TrainConfig, n_train: int, processes: int) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, validate every N steps) for a training set."""
    per_epoch = max(
        global_batches(n_train, tc.batch_size * processes, processes) // tc.grad_accum, 1
    )
    total = tc.max_steps or max(1, int(per_epoch * tc.epochs))
    # ceil: the last in-epoch validation lands on the epoch end, not one step before it
    eval_every = tc.eval_every or max(1, math.ceil(per_epoch / tc.evals_per_epoch))
    return per_epoch, total, eval_every


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


def choose_precision(setting: str, device: str) -> tuple[str, str]:
    """accelerate's mixed_precision ("no" | "bf16") for train.mixed_precision on a device
    type ("cpu" | "cuda"), and why. auto: bf16 autocast where the hardware computes bf16
    natively (CUDA with bf16 support; a CPU with AMX or AVX512-BF16: full fine-tuning of
    MiniLM ran 125 examples/s in bf16 against 72 in fp32 on such a CPU, same test accuracy),
    fp32 elsewhere (emulated bf16 is slower than fp32)."""
    if setting != "auto":
        return setting, f"train.mixed_precision={setting}"
    if device == "cuda":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "no", "auto: this GPU has no bf16"
        return "bf16", "auto: CUDA computes bf16 natively"
    flag = cpu_bf16_flag()
    if flag:
        return "bf16", f"auto: this CPU computes bf16 natively ({flag})"
    return "no", "auto: this CPU has no native bf16 (no AMX or AVX512-BF16), fp32 is faster"


def precision(setting: str) -> str:
    """accelerate's mixed_precision for train.mixed_precision on this machine's device."""
    return choose_precision(setting, "cuda" if torch.cuda.is_available() else "cpu")[0]
