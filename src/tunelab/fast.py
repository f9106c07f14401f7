"""CPU fast paths that keep the training math (on by default, `train.fast_cpu: false` turns
them off). Each one was measured on the profile of a MiniLM step on 2 cores (bench/RESULTS.md):

- ``tune_allocator``: glibc hands every buffer above 32 MB (the word-embedding gradient of a
  BERT-size vocabulary, 47 MB) back to the kernel when it is freed, so each step pays page
  faults to zero a fresh one: 6.5% of a full fine-tuning step went to that ``fill_``. Serving
  all allocations from the heap and never trimming it removes it.
- ``FastDropout``: torch's CPU dropout draws its mask with a per-element Bernoulli sampler,
  5.7 ms for a [32, 44, 384] activation (8-19% of a step, more with LoRA's extra dropout). Here
  the mask comes from numpy's PCG64 as 16-bit integers compared with a threshold: 0.74 ms. The
  same distribution (keep probability 1 - p, rounded to 1/65536), unbiased (kept values are
  scaled by 65536/kept-count exactly), seeded from torch's generator so `train.seed` and
  resume stay reproducible. Masks differ from torch's, so same-seed runs match torch's dropout
  within seed noise, not bit for bit (tests/test_fast.py shows both).
- ``attention``: the same swap for the attention-probability dropout, which runs inside
  ``scaled_dot_product_attention`` (its math path on CPU). Registered with transformers as the
  "tunelab_sdpa" attention; without dropout (evaluation) it *is* the sdpa path.

On CUDA none of this applies (torch's dropout is fast there).
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """Keep freed memory in the process heap (glibc only; once per process). Returns whether
    the settings were applied. RSS then stays at the run's peak instead of shrinking between
    steps: `settled_rss` still trims it explicitly between runs."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or no glibc
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    _ALLOCATOR_TUNED = bool(libc.mallopt(m_mmap_max, 0)) and bool(
        libc.mallopt(m_trim_threshold, 1 << 40)
    )
    return _ALLOCATOR_TUNED


def release_freed() -> None:
    """Return the heap's freed memory to the OS now (glibc's malloc_trim; what the tuned
    allocator otherwise keeps), after collecting garbage."""
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def dropout_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A float32 mask of 0 and 1/keep, keep = P(kept) (1 - p rounded to 1/65536)."""
    keep, scale = _keep(shape, p)
    return torch.from_numpy(np.multiply(keep, np.float32(scale), dtype=np.float32))


def _keep(shape: torch.Size, p: float) -> tuple[np.ndarray, float]:
    """Boolean keep-mask and the exact unbiased scale for it."""
    seed = int(torch.randint(0, 2**62, ()))  # from torch's generator: train.seed rules
    rng = np.random.Generator(np.random.PCG64(seed))
    drop = round(p * 65536)
    bits = rng.integers(0, 65536, tuple(shape), dtype=np.uint16)
    return bits >= drop, 65536 / (65536 - drop)


class _Dropout(torch.autograd.Function):
    """float32: multiply by a float mask (one pass each way). bf16/fp16 (CPU autocast):
    where(keep, x * scale, 0), so the scale is applied in float like torch's own dropout
    instead of being rounded to 8 mantissa bits."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        if is_fake(x):  # tunelab.planning traces shapes: the same saved mask, no random draw
            mask = torch.empty(x.shape, dtype=torch.float32 if x.dtype == torch.float32 else bool)
            ctx.save_for_backward(mask)
            ctx.scale = None
            return x * mask
        if x.dtype == torch.float32:
            mask = dropout_mask(x.shape, p)
            ctx.save_for_backward(mask)
            ctx.scale = None
            return x * mask
        keep, scale = _keep(x.shape, p)
        keep = torch.from_numpy(keep)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        if ctx.scale is None:
            return grad * mask, None
        return torch.where(mask, grad * ctx.scale, 0), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`torch.nn.functional.dropout` with the fast mask for floating-point CPU tensors."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not x.is_floating_point() or not 0.0 < p < 1.0:
        return nn.functional.dropout(x, p, training)
    return _Dropout.apply(x, p)


class FastDropout(nn.Dropout):
    """`nn.Dropout` (same `p`, same place in the model) with the fast CPU mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, **kwargs):
    """transformers attention: sdpa, except for non-causal attention with dropout on CPU,
    where it is the math that sdpa runs there (scores, mask, softmax, dropout, weighted sum)
    with the fast dropout mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (
        dropout == 0.0
        or query.device.type != "cpu"
        or getattr(module, "is_causal", False)
        or getattr(module, "num_key_value_groups", 1) != 1
        or kwargs.get("position_bias") is not None
        or key.shape[-2] != query.shape[-2]
    )
    if plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, **kwargs
        )
    scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = _Dropout.apply(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


ATTENTION = "tunelab_sdpa"


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def install(model: nn.Module) -> dict[str, int]:
    """Swap every `nn.Dropout` for `FastDropout` and sdpa attention for the fast one (same
    math). Returns what was swapped, for the run record."""
    swapped = {"dropout": 0, "attention": 0}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                setattr(parent, name, FastDropout(child.p, child.inplace).train(child.training))
                swapped["dropout"] += 1
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    sdpa = [c for c in configs.values() if getattr(c, "_attn_implementation", None) == "sdpa"]
    if sdpa:
        _register_attention()
    for config in sdpa:
        # the internal field: it is never saved to config.json, so saved models say sdpa
        config._attn_implementation_internal = ATTENTION
    swapped["attention"] = len(sdpa)
    return swapped


def uninstall(model: nn.Module) -> None:
    """Undo `install` (plain `nn.Dropout`, sdpa attention)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is FastDropout:
                setattr(parent, name, nn.Dropout(child.p, child.inplace).train(child.training))
    for m in model.modules():
        config = getattr(m, "config", None)
        if getattr(config, "_attn_implementation", None) == ATTENTION:
            config._attn_implementation_internal = "sdpa"
