"""Fully sharded data parallel training (FSDP): with ``train.fsdp=true`` (or an accelerate config
that says FSDP: ``accelerate launch --use_fsdp``) and several processes, each process keeps
1/N of the weights, gradients and optimizer state (torch's ``fully_shard``, FSDP2, on every
transformer block the model names in ``_no_split_modules`` and on the root); a block's full
weights exist only while it computes. accelerate wraps FSDP on GPUs only: tunelab calls torch
itself, so one path runs on CPU processes (gloo) and on GPUs alike.

Everything written is a full state dict (every process joins the gather, the main process
writes): a checkpoint made under FSDP resumes under FSDP with any number of processes, or in
one process, and the final model or adapter is a plain one.
"""

from __future__ import annotations

import contextlib
import os

import torch

from tunelab.errors import TunelabError

ENV = "ACCELERATE_USE_FSDP"  # what `accelerate launch` sets for an FSDP config


def wanted(tc) -> bool:
    """FSDP asked for: train.fsdp, or accelerate's launcher with an FSDP config."""
    return bool(tc.fsdp) or os.environ.get(ENV, "").lower() in ("1", "true")


@contextlib.contextmanager
def accelerate_without_fsdp():
    """accelerate must not wrap the model itself (it would on GPUs, not on CPUs): its FSDP
    variable is hidden while the Accelerator is built."""
    saved = os.environ.pop(ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[ENV] = saved


def prepare(acc, tc, model, env, build_optimizer):
    """The model and its optimizer for the loop: sharded (FSDP) when asked under several
    processes, else as accelerate prepares them (DDP under several processes); the record's
    ``env.parallel`` says which ("fsdp x2", "ddp x2", "" for one process)."""
    n = acc.num_processes
    env.parallel = "" if n == 1 else f"{'fsdp' if wanted(tc) else 'ddp'} x{n}"
    if not (wanted(tc) and n > 1):
        return acc.prepare(model, build_optimizer(model))
    refuse(model)
    from torch.distributed.fsdp import fully_shard

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(inner, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)  # the rest: embeddings, head, adapters outside the blocks
    # the optimizer after sharding (its parameters are the shards); the model is not wrapped
    return model, acc.prepare(build_optimizer(model))


def refuse(model, quantized: bool = False) -> None:
    """Methods FSDP cannot take here, in one line (``planning.trace.refuse_early``: before any
    run folder exists)."""
    cfg = getattr(model, "peft_config", {}).get("default")
    if cfg is not None and getattr(cfg, "is_prompt_learning", False):
        raise TunelabError(
            f"train.fsdp: {cfg.peft_type.value.lower()} keeps its virtual tokens outside the "
            f"model's blocks, which FSDP cannot gather for saving; train it without train.fsdp"
        )
    if type(cfg).__name__ == "AdaLoraConfig":
        raise TunelabError("train.fsdp: AdaLoRA reallocates ranks between steps; use lora")
    if quantized or any(getattr(p, "quant_state", None) is not None for p in model.parameters()):
        raise TunelabError("train.fsdp: a 4-bit base cannot be sharded here; drop model.quantize")


def sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (every process must call), else the tensor."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def like(t: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A whole tensor as ``param`` holds it: this process's shard of a sharded parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor) or isinstance(t, DTensor):
        return t
    t = t.to(param.device, param.dtype)
    return distribute_tensor(t, param.device_mesh, param.placements, src_data_rank=None)


def whole(tensors: dict, keep: bool = True) -> dict:
    """Each tensor gathered whole onto the CPU, one at a time (every process must call); with
    ``keep`` False (the processes that do not write) each is dropped as soon as gathered, so
    only the writer ever holds the whole state."""
    out = {}
    for k, v in tensors.items():
        v = full(v) if torch.is_tensor(v) else v
        if keep:
            out[k] = v.detach().cpu() if torch.is_tensor(v) else v
    return out


def full_state_dict(model, keep: bool = True) -> dict[str, torch.Tensor] | None:
    """The whole model's state on the CPU (every process gathers), or None unsharded."""
    return whole(model.state_dict(), keep) if sharded(model) else None


def optimizer_state(optimizer, keep: bool = True) -> dict:
    """The optimizer's state_dict with sharded moments gathered whole."""
    sd = optimizer.state_dict()
    return {**sd, "state": {k: whole(st, keep) for k, st in sd["state"].items()}}


def reshard_optimizer(optimizer) -> None:
    """After ``load_state_dict`` of whole moments: each moment as its parameter is sharded."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    for group in inner.param_groups:
        for p in group["params"]:
            st = inner.state.get(p, {})
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    st[k] = like(v, p)


def eval_share(model, every: list, rank: int, world: int) -> list[tuple[list[int], bool]]:
    """This process's evaluation batches (every ``world``-th), each with whether it counts. A
    sharded model needs every process to run as many forwards as the others (each forward
    gathers weights with all of them): a process short of batches repeats the first one and
    drops what it computes."""
    mine = [(idx, True) for idx in every[rank::world]]
    if sharded(model) and every:
        mine += [(every[0], False)] * (-(-len(every) // world) - len(mine))
    return mine


def units(model) -> dict[str, int]:
    """What FSDP gathers whole, in bytes, for ``plan``: the largest block's weights and its
    trainable part (its gradients before they are reduce-scattered), and the weights outside
    every block (the root's: embeddings, head), which stay gathered from forward to backward."""
    blocks, inner = [], model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in names and not any(module is b for b in blocks):
            blocks.append(module)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}

    def size(params) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    each = [(size(b.parameters()), size(p for p in b.parameters() if p.requires_grad))
            for b in blocks] or [(0, 0)]  # fmt: skip
    root = size(p for p in model.parameters() if id(p) not in in_blocks)
    return {"unit_weights": max(w for w, _ in each), "unit_gradients": max(g for _, g in each),
            "root_weights": root}  # fmt: skip
