"""What a run writes of its model: the final adapter or model (standard formats, whole or
absent) and the resumable checkpoint (``state.pt``: trainable weights, optimizer, scheduler,
progress, best weights, RNG streams), one writer and one reader, both atomic."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tunelab.anatomy import unwrap
from tunelab.errors import TunelabError, first_line
from tunelab.files import _atomic
from tunelab.results import STATE
from tunelab.sharding import full_state_dict, like, optimizer_state, reshard_optimizer, whole


def save_model(model, tokenizer, folder: Path, write: bool = True) -> None:
    """Standard formats: PEFT adapter (+ the base config with labels) or a full HF model;
    written to a temporary folder renamed into place, so ``folder`` is whole or absent. A
    sharded model's weights are gathered whole first (every process calls; ``write`` only
    on the main one)."""
    from tunelab.guard import fault

    state_dict = full_state_dict(model, keep=write)  # None unless sharded
    if not write:
        return
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    whole = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(tmp, safe_serialization=True, **whole)
    base = unwrap(model)
    base.config.save_pretrained(tmp)  # id2label + num_labels for loading the adapter back
    tokenizer.save_pretrained(tmp)
    fault("final-save")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters (all a frozen-backbone method changes); of a
    sharded model, copies of this process's shards (``whole`` gathers them for a file)."""
    from torch.distributed.tensor import DTensor

    return {
        n: p.detach().clone() if isinstance(p, DTensor) else p.detach().to("cpu", copy=True)
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(like(t, params[n]))  # a sharded parameter takes its shard


def save_checkpoint(
    run_dir: Path, model, optimizer, scheduler, progress: dict, best: dict[str, torch.Tensor],
    write: bool = True,
) -> None:  # fmt: skip
    """The full training state, atomically: weights that train, optimizer, scheduler,
    progress, the best validation's weights and the RNG streams. ``write`` False: gather
    only (a sharded model's other processes; the main process writes)."""
    state = {
        "trainable": whole(trainable_state(model), keep=write),  # FSDP: gathered whole
        "optimizer": optimizer_state(optimizer, keep=write),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "best_state": whole(best, keep=write),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    if write:
        _atomic(Path(run_dir) / STATE, lambda f: torch.save(state, f), fault_point="checkpoint")


def load_checkpoint(run_dir: Path, model, optimizer, scheduler) -> tuple[dict, dict]:
    """Restore what ``save_checkpoint`` wrote; return (progress, best weights)."""
    # weights_only: tensors and plain containers only; a pickle planted in a shared runs
    # folder cannot run code here
    path = Path(run_dir) / STATE
    try:
        # map_location: a checkpoint written on a GPU resumes on any device (the weights
        # are copied into the model where it lives; the optimizer casts its state there)
        st = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        raise TunelabError(
            f"cannot read the checkpoint {path}: {first_line(e)}; it is left as it is: to keep "
            f"it, move it out of the folder (mv {path} {path}.bad) and run without --resume; "
            f"to discard it and start over, run again with --overwrite"
        ) from e
    load_trainable(model, st["trainable"])
    optimizer.load_state_dict(st["optimizer"])
    reshard_optimizer(optimizer)
    scheduler.load_state_dict(st["scheduler"])
    torch.set_rng_state(st["rng"])
    restore_cuda_rng(st.get("cuda_rng"))
    return st["progress"], st["best_state"]


def restore_cuda_rng(states: list | None) -> bool:
    """The CUDA generators' states as saved, where the same number of GPUs is visible (one
    state per GPU); elsewhere (resumed on the CPU, or with another GPU count) they are left
    as seeded: dropout masks then differ from the uninterrupted run's, nothing else does.
    Returns whether they were restored."""
    if not states or not torch.cuda.is_available() or len(states) != torch.cuda.device_count():
        return False
    torch.cuda.set_rng_state_all([s.cpu() for s in states])
    return True
