"""What a plan says: one ``Cost`` per method and the ``Plan`` around them (the JSON of
`tunelab plan --json`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from tunelab.planning.process import ProcessPeak


@dataclass
class Cost:
    """One method's cost: bytes, FLOPs, seconds; or why it cannot run."""

    method: str
    trainable: int = 0
    total: int = 0
    active: int = 0
    """Parameters a token runs through: the total for a dense model, fewer for a mixture of
    experts (its FLOPs count these; its memory holds every expert)."""
    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    activations_from: str = ""
    """How the activations were measured: a fake-tensor trace, or real shallow copies."""
    temporaries: int = 0
    """Backward's transient tensors at the peak: twice the largest saved activation."""
    peak: int = 0
    eval_peak: int = 0
    """Evaluation's peak: weights + one evaluation batch's working set (``eval_working_set``)."""
    process: ProcessPeak = field(default_factory=ProcessPeak)
    """What the OS sees at the peak (plan.process): CPU resident set / CUDA reserved, a range."""
    flops_per_example: float = 0.0
    flops_per_epoch: float = 0.0
    efficiency: float = 0.0
    efficiency_from: str = ""
    seconds: float = 0.0
    saves_bytes: int = 0
    """What the run saves: the adapter for peft methods, else the whole model."""
    checkpoint_bytes: int = 0
    """The resume state (trainable weights, AdamW state, best weights)."""
    fits_memory: bool | None = None
    fits_time: bool | None = None
    error: str = ""


@dataclass
class Plan:
    model: str
    task: str
    device: str
    precision: str
    precision_why: str
    weights_dtype: str
    """The dtype runs keep the weights in (float32: see models.WEIGHTS_DTYPE)."""
    stored_dtype: str
    """The dtype the config says the checkpoint is stored in ("" if it does not say)."""
    batch_size: int
    max_length: int
    longest: int
    """Tokens in the longest training batch's rows (the activation peak)."""
    mean_tokens: float
    tokens_from: str
    examples: int
    epochs: float
    peak_flops: float
    peak_from: str
    """Where the matmul peak comes from (measured here, or assumed and which)."""
    memory_budget: int | None
    memory_from: str
    time_budget: float | None
    labelled_tokens: float | None = None
    """A decoder's labelled tokens per training row (the answer, or an SFT response): the
    positions its LM head projects; None: every position (no tokenizer to count them)."""
    processes: int = 1
    """Training processes (GPUs): the memory columns are one process's share."""
    fsdp: bool = False
    """Sharded (train.fsdp) rather than a full copy per process (DDP)."""
    experts: list[int] | None = None
    """A mixture of experts: [routed experts per layer, experts run per token]; else None."""
    estimates: list[Cost] = field(default_factory=list)
    suggestion: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)
