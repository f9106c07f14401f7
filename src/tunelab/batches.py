"""Tokenized splits and their batches: encoded once, padded per batch, length-bucketed
batches for training (deterministic per seed and epoch, sharded across processes) and
length-sorted batches for evaluation."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from functools import cached_property

import torch

from tunelab.data import Split


@dataclass
class Encoded:
    """Token ids per example (unpadded) and labels; padding happens per batch."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]

    def head(self, n: int) -> Encoded:
        """The first ``n`` examples (all when there are fewer), every per-example list cut."""
        if n >= len(self):
            return self
        cut = {
            f.name: getattr(self, f.name)[:n]
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), list)
        }
        return dataclasses.replace(self, **cut)


def encode(split: Split, tokenizer, max_length: int) -> Encoded:
    """Tokenize a split once (fast tokenizer, batched, no padding)."""
    args = (split.texts, split.pairs) if split.pairs else (split.texts,)
    enc = tokenizer(*args, truncation=True, max_length=max_length, padding=False)
    return Encoded(enc["input_ids"], enc.get("token_type_ids"), list(split.labels))


def collate(data: Encoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the examples ``idx`` to the longest of them and build the tensors of one batch
    (one tensor conversion per field: per-row copies cost 6% of an evaluation pass)."""
    rows = [data.input_ids[i] for i in idx]
    width = max(len(r) for r in rows)

    def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs])

    batch = {
        "input_ids": pad(rows, pad_id),
        "attention_mask": pad([[1] * len(r) for r in rows], 0),
        "labels": torch.tensor([data.labels[i] for i in idx]),
    }
    if data.token_type_ids:
        batch["token_type_ids"] = pad([data.token_type_ids[i] for i in idx], 0)
    return batch


def train_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, pool: int = 50
) -> list[list[int]]:
    """Batches of similar length for one epoch, deterministic in (seed, epoch).

    Shuffle, cut into pools of ``pool`` batches, sort each pool by length, cut into batches,
    shuffle the batches: padding drops to a few percent while the order stays random.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start : start + batch_size * pool], key=lengths.__getitem__)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def optimizer_steps(
    lengths: list[int], tc, epoch: int, processes: int, index: int
) -> list[list[tuple[list[int], float]]]:
    """Process ``index``'s optimizer steps of an epoch, each ``tc.grad_accum`` (batch, loss
    scale): global batches of batch_size x processes, each process taking its part (the same
    examples per optimizer step as one process with the global batch size)."""
    batches = train_batches(lengths, tc.batch_size * processes, tc.seed, epoch)
    batches = shard_batches(batches, processes, index)
    steps = [batches[i : i + tc.grad_accum] for i in range(0, len(batches), tc.grad_accum)]
    return [st for st in steps if len(st) == tc.grad_accum]


def shard_batches(
    batches: list[list[int]], processes: int, rank: int
) -> list[tuple[list[int], float]]:
    """This process's part of each global batch, and the factor its mean loss is scaled by.

    Every example is used exactly once: a global batch is cut into ``processes`` contiguous
    parts whose sizes differ by at most one, and the epoch's short batch, when it is too small
    to give every process an example, joins the batch before it (``global_batches`` counts
    the same). DDP averages gradients over processes, so part r of
    a global batch of G examples scales its loss by processes x len(part) / G: the average is
    then the gradient of the global batch's mean loss, as one process would compute it.
    """
    n = processes
    short = next((i for i, g in enumerate(batches) if len(g) < n), None)
    if short is not None and len(batches) > 1:  # batches are shuffled: it can be anywhere
        into = short - 1 if short > 0 else 1
        merged = batches[into] + batches[short]
        batches = [merged if i == into else g for i, g in enumerate(batches) if i != short]
    out = []
    for g in batches:
        if len(g) < n:  # fewer examples than processes in the whole epoch
            continue
        size, extra = divmod(len(g), n)
        start = rank * size + min(rank, extra)
        part = g[start : start + size + (rank < extra)]
        out.append((part, n * len(part) / len(g)))
    return out


def global_batches(n_train: int, global_batch: int, processes: int) -> int:
    """Global batches an epoch has after ``shard_batches`` (the short one merged when it has
    fewer examples than processes)."""
    count, rest = divmod(n_train, global_batch)
    merged = processes > 1 and count > 0 and 0 < rest < processes
    return count + (rest > 0) - merged


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches sorted by length (least padding; order does not matter)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
