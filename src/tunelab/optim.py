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
