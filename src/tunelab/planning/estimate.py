"""Plan: what each method will cost on a model, data and machine, answered before training.

Nothing is loaded and nothing trains. The model is built from its ``config.json`` under
torch's FakeTensorMode (tensors with shapes, dtypes and devices but no storage: the tracing
torch.compile uses, a stricter cousin of accelerate's ``init_empty_weights``), each method is
applied to it, and one training forward of the largest batch is traced with the same hook
that measures real runs (``measure.saved_activation_bytes``): the fake kernels choose the
same attention path and autocast casts as the real ones, so activations are what autograd
would keep, not a formula. A 7B model plans in about two seconds.

Memory at the training peak = weights + AdamW state + the larger of activations and
gradients (backward frees each layer's activations as it writes that layer's gradients, so
the two peak at opposite ends of backward) + backward's temporaries, taken as twice the
largest saved tensor (its gradient and the gradient flowing through it: for a decoder, the
logits' and log-softmax's over the vocabulary). Checked against torch.profiler's allocation
events of real steps by bench/plan_memory.py.

Time = training FLOPs (6N rule on real tokens, as run records count them) / (this machine's
measured matmul peak x an efficiency): from ``--calibrate`` (a few real steps of each
method), else from past run records in the runs folder, else an assumed 0.5.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tunelab import measure
from tunelab.config import RunConfig
from tunelab.errors import NoTokenizer, TunelabError
from tunelab.methods import METHODS
from tunelab.models import WEIGHTS_DTYPE, frozen_dtype
from tunelab.planning.costs import Cost, Plan
from tunelab.planning.process import process_peak, tensor_room
from tunelab.planning.rate import calibrate, cuda_peak, learned_efficiency, peak_flops
from tunelab.planning.text import duration, gib
from tunelab.planning.trace import (
    eval_working_set,
    in_nf4,
    model_config,
    per_process,
    spec,
    trace,
)
from tunelab.precision import compute_dtype
from tunelab.quantize import check_method


def estimate(cfg: RunConfig, method: str, plan: Plan, config, runs: Path, base: int = 0) -> Cost:
    """One method's row of the plan."""
    est = Cost(method)
    fast_cpu = plan.device == "cpu" and cfg.train.fast_cpu
    try:
        frozen = frozen_dtype(cfg.model.base_dtype, plan.precision, METHODS[method])
        if cfg.model.quantize != "none":  # QLoRA: 4-bit layers multiply in the run's precision
            check_method(cfg.model, METHODS[method])
            frozen = compute_dtype(plan.precision)
        t = trace(
            config,
            plan.task,
            spec(cfg, method),
            plan.batch_size,
            plan.longest,
            plan.precision != "no",  # fp16 sizes as bf16: 2 bytes an element
            fast_cpu,
            frozen,
            math.ceil(plan.labelled_tokens) if plan.labelled_tokens else None,
        )
    except TunelabError as e:
        est.error = str(e)
        return est
    if cfg.model.quantize != "none":  # the frozen linear weights stored in NF4 instead
        t = in_nf4(t, frozen)
    t = per_process(t, plan.processes, plan.fsdp)  # one process's share (DDP, FSDP)
    est.trainable, est.total, est.active = t["trainable"], t["total"], t["active"]
    plan.experts = plan.experts or t["experts"]
    est.weights, est.gradients, est.optimizer = t["weights"], t["gradients"], t["optimizer"]
    est.activations, est.activations_from = t["activations"], t["activations_from"]
    est.temporaries, est.peak = t["temporaries"], t["peak"]
    rows = cfg.train.eval_batch_size
    est.eval_peak = est.weights + t.get("gathered", 0)
    est.eval_peak += eval_working_set(config, plan.task, rows, plan.longest)
    tensors = max(est.peak, est.eval_peak)
    est.process = process_peak(plan.device, tensors, est.weights + est.optimizer, base)
    est.flops_per_example = t["flops_per_token"] * plan.mean_tokens
    est.flops_per_epoch = est.flops_per_example * plan.examples
    est.efficiency, est.efficiency_from = learned_efficiency(
        runs, cfg.model.name, method, plan.device, plan.precision, plan.peak_flops
    )
    est.seconds = est.flops_per_epoch * plan.epochs / (plan.peak_flops * est.efficiency)
    if plan.device == "cuda":  # N GPUs share the examples (CPU processes share the cores)
        est.seconds /= plan.processes
    est.saves_bytes = est.gradients if METHODS[method].saves_adapter else est.weights
    est.checkpoint_bytes = 2 * est.gradients + est.optimizer
    return est


def plan(
    cfg: RunConfig,
    methods: list[str],
    *,
    examples: int | None = None,
    device: str | None = None,
    memory: int | None = None,
    seconds: float | None = None,
    calibrate_rate: bool = False,
    processes: int = 1,
) -> Plan:
    """Estimate every method for ``cfg``'s model, data shape and machine."""
    from tunelab.precision import choose_precision

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    mode, why = choose_precision(cfg.train.mixed_precision, device)
    config = model_config(cfg.model.name, cfg.task, 2)  # a bad model name fails first
    mean, longest, n, labels, source, labelled = data_shape(cfg)
    base = measure.settled_rss()  # interpreter, libraries and the tokenized data, as a run
    if cfg.task == "classification":
        config.num_labels = labels
    runs = Path(cfg.out_dir)
    budget, budget_from = memory_budget(memory, device)
    stored = str(getattr(config, "dtype", None) or "").removeprefix("torch.")
    if device == "cpu":
        peak, peak_from = peak_flops(mode), "measured on this CPU"
    else:
        peak, peak_from = cuda_peak(mode)
    p = Plan(
        model=cfg.model.name,
        task=cfg.task,
        device=device,
        precision=mode,
        precision_why=why,
        weights_dtype=str(WEIGHTS_DTYPE).removeprefix("torch."),
        stored_dtype=stored,
        batch_size=cfg.train.batch_size,
        max_length=cfg.data.max_length,
        longest=longest,
        mean_tokens=mean,
        tokens_from=source,
        examples=examples or n,
        epochs=cfg.train.epochs,
        peak_flops=peak,
        peak_from=peak_from,
        memory_budget=budget,
        memory_from=budget_from,
        time_budget=seconds,
        labelled_tokens=labelled if cfg.task == "causal-lm" else None,
        processes=processes,
        fsdp=processes > 1 and cfg.train.fsdp,
    )
    p.estimates = [estimate(cfg, m, p, config, runs, base) for m in methods]
    if calibrate_rate:
        calibrate(cfg, methods, p, runs)
        p.estimates = [estimate(cfg, m, p, config, runs, base) for m in methods]
    fits(p, budget, seconds)
    p.suggestion = suggest(p)
    return p


def fits(p: Plan, budget: int | None, seconds: float | None) -> None:
    """Each estimate against the budgets: memory by the high end of what the OS sees (the
    number that kills a process), time by the estimate."""
    for e in p.estimates:
        if not e.error:
            e.fits_memory = None if budget is None else e.process.high <= budget
            e.fits_time = None if seconds is None else e.seconds <= seconds


def data_shape(cfg: RunConfig) -> tuple[float, int, int, int, str, float | None]:
    """(mean tokens per training example, tokens of the longest batch row, training
    examples, number of labels, where the token counts come from, mean labelled tokens per
    row of a decoder's examples or None). From the configured data tokenized by the model's
    tokenizer; a model without one (a folder holding only the published config.json) counts
    data.max_length tokens for every example, every one labelled, and says so."""
    from tunelab.data import load_splits
    from tunelab.tasks import prepare_data

    try:
        data = prepare_data(cfg)
    except NoTokenizer:
        splits = load_splits(cfg.data)
        n, labels = len(splits.train), max(2, len(splits.label_names))
        source = "data.max_length for every example: the model has no tokenizer"
        return float(cfg.data.max_length), cfg.data.max_length, n, labels, source, None
    lengths = data.train.lengths
    n_labels = max(2, len(data.splits.label_names))
    source = f"{data.splits.source}, tokenized"
    if data.task.template:  # a decoder: which prompt the lengths include
        source += f" in the prompt template {data.task.template!r}"
    prompts = getattr(data.train, "prompt_lengths", None)  # decoders: prompt + labelled part
    labelled = sum(n - p for n, p in zip(lengths, prompts, strict=True)) if prompts else None
    mean = sum(lengths) / len(lengths)
    per_row = labelled / len(lengths) if labelled is not None else None
    return mean, max(lengths), len(lengths), n_labels, source, per_row


def memory_budget(memory: int | None, device: str) -> tuple[int | None, str]:
    if memory is not None:
        return memory, "--memory"
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, "this GPU's memory"
    if device == "cpu":
        import psutil

        return psutil.virtual_memory().total, "this machine's RAM"
    return None, "unknown"


def largest_batch(e: Cost, p: Plan) -> int:
    """The largest batch size whose peak fits the memory budget (activations and temporaries
    scale with it; the gradients do not)."""
    if p.memory_budget is None or not e.activations:
        return p.batch_size
    budget = tensor_room(p.device, p.memory_budget, e.weights + e.optimizer, e.process.base)
    room = budget - (e.weights + e.optimizer)
    if room < e.gradients:
        return 0
    return max(0, int(room // ((e.activations + e.temporaries) / p.batch_size)))


def suggest(p: Plan) -> str:
    """The method to start with, and why, from what fits."""
    ok = [e for e in p.estimates if not e.error]
    fit = [e for e in ok if e.fits_memory is not False and e.fits_time is not False]
    if not ok:
        return "no method can run on this model (reasons above)"
    if not fit:
        least = min(ok, key=lambda e: e.peak)
        b = largest_batch(least, p)
        fix = (
            f"{least.method} fits at batch size {b} (set train.grad_accum to keep the global batch)"
            if 0 < b < p.batch_size and least.fits_time is not False
            else "lower the batch size or data.max_length, or set train.gradient_checkpointing=true"
        )
        return (
            f"nothing fits as asked: the smallest is {least.method} at {gib(least.peak)} and "
            f"{duration(least.seconds)}; {fix}"
        )
    by = {e.method: e for e in fit}
    full = [m for m in METHODS if m in by and METHODS[m].trains_every_weight]
    if full:
        first = full[0]
        e = by[first]
        cheaper = min(fit, key=lambda x: x.peak)
        tail = (
            f"; {cheaper.method} needs {gib(cheaper.peak)} ({cheaper.peak / e.peak:.0%} of it)"
            if cheaper is not e
            else ""
        )
        return (
            f"{first}: it fits ({gib(e.peak)}, {duration(e.seconds)}) and trains every "
            f"weight, the reference the parameter-efficient methods approximate{tail}. "
            f"`tunelab compare --train-sizes` shows whether a cheaper method matches it at "
            f"your data size"
        )
    e = min(fit, key=lambda x: (not METHODS[x.method].efficient_default, x.peak))
    return (
        f"{e.method}: full fine-tuning does not fit, {e.method} does ({gib(e.peak)}, "
        f"{duration(e.seconds)}) training {e.trainable:,} parameters"
    )
