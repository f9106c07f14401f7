"""torch's grouped matmul (how transformers runs a mixture of experts' fused experts) as the
plan's fake-tensor trace needs it: torch's meta kernel for ``_grouped_mm`` (what fake tensors
run) accepts only bf16 inputs, although the CPU and GPU kernels compute float32 as well. This
operator has the same output and saves for backward what torch's autograd saves for the real
one: the input only when the weight needs a gradient, the weight only when the input does
(frozen experts under LoRA keep no copy of their inputs). ``traceable`` routes transformers'
experts through it while the plan traces."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@torch.library.custom_op("tunelab::grouped_mm", mutates_args=())
def grouped_mm(input: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``input`` [tokens, in] (sorted by expert), ``weight`` [experts, in, out], ``offs`` the
    cumulative token count per expert -> [tokens, out]. Real tensors: per expert, a matmul."""
    out, start = input.new_zeros(input.shape[0], weight.shape[2]), 0
    for i, end in enumerate(offs.tolist()):
        out[start:end] = input[start:end] @ weight[i]
        start = end
    return out


@grouped_mm.register_fake
def _(input, weight, offs):
    return input.new_empty(input.shape[0], weight.shape[2])


def _setup(ctx, inputs, output):
    input, weight, offs = inputs
    ctx.offs = offs
    ctx.save_for_backward(
        weight if ctx.needs_input_grad[0] else None, input if ctx.needs_input_grad[1] else None
    )


def _backward(ctx, grad):
    weight, input = ctx.saved_tensors
    grad_in = grad_w = None
    if weight is not None:
        grad_in = grouped_mm(grad, weight.transpose(1, 2), ctx.offs)
    if input is not None:
        grad_w, start = input.new_zeros(len(ctx.offs), input.shape[1], grad.shape[1]), 0
        for i, end in enumerate(ctx.offs.tolist()):
            grad_w[i] = input[start:end].T @ grad[start:end]
            start = end
    return grad_in, grad_w, None


grouped_mm.register_autograd(_backward, setup_context=_setup)


@contextmanager
def traceable():
    """transformers' fused experts multiply through ``grouped_mm`` above while in effect (a
    transformers without that seam: unchanged, and a failing op takes the real-copies route)."""
    try:
        from transformers.integrations import moe
    except ImportError:
        moe = None
    if moe is None or not hasattr(moe, "_grouped_mm"):
        yield
        return
    saved = moe._grouped_mm
    moe._grouped_mm = lambda input, weight, offs: grouped_mm(input.to(weight.dtype), weight, offs)
    try:
        yield
    finally:
        moe._grouped_mm = saved
