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

import dataclasses
import json
import re
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab import measure
from tunelab.anatomy import config_layers, with_layers
from tunelab.config import RunConfig
from tunelab.errors import ConfigError, NoTokenizer, TunelabError
from tunelab.methods import METHODS, build_method
from tunelab.models import PROBLEM_TYPE, WEIGHTS_DTYPE, resolve

ASSUMED_EFFICIENCY = 0.5  # bench/RESULTS.md: 54-71% of the fp32 matmul peak on MiniLM
CALIBRATION = "plan-calibration.json"
CALIBRATE_MAX_PARAMS = 400e6  # calibrate on the real architecture up to this size


@dataclass
class Estimate:
    """One method's cost: bytes, FLOPs, seconds; or why it cannot run."""

    method: str
    trainable: int = 0
    total: int = 0
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
    memory_budget: int | None
    memory_from: str
    time_budget: float | None
    estimates: list[Estimate] = field(default_factory=list)
    suggestion: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


# ---------------------------------------------------------------- the model, without weights


def model_config(name: str, task: str, n_labels: int):
    """The model's config (config.json only: no weights, no tokenizer needed)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve(name))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TunelabError(
            f"cannot read the config of model {name!r}: {first}. Give a built-in name, a Hub "
            f"id (needs internet) or a folder with config.json"
        ) from None
    if task == "classification":
        config.num_labels = n_labels
        config.problem_type = PROBLEM_TYPE
    if getattr(config, "pad_token_id", None) is None:  # decoders: classification needs one
        config.pad_token_id = getattr(config, "eos_token_id", None) or 0
        if isinstance(config.pad_token_id, list):
            config.pad_token_id = config.pad_token_id[0]
    return config


def build(config, task: str):
    """A randomly initialised model from ``config`` (``fake_model`` for one without storage)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()
    cls = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    try:  # in the dtype runs train in, whatever dtype the checkpoint is stored in
        return cls.from_config(config, dtype=WEIGHTS_DTYPE)
    except Exception as e:
        raise TunelabError(f"cannot build {config.model_type} for {task}: {e}") from None


def fake_model(config, task: str, knobs: dict, mode):
    """The model with the method applied, its parameters fake CPU tensors of ``mode``: built
    and prepared on the meta device (peft moves adapters between devices, which fake tensors
    refuse), then every parameter swapped for a fake one (tied weights stay tied)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = build(config, task)
    model.tie_weights()  # inside init_empty_weights, tied weights come out as two parameters
    with init_empty_weights():
        model = build_method(knobs).prepare(model)
    fakes: dict[int, torch.nn.Parameter] = {}
    with mode:
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is None:
                    continue
                if id(p) not in fakes:
                    t = torch.empty(p.shape, dtype=p.dtype, device="cpu")
                    fakes[id(p)] = torch.nn.Parameter(t, requires_grad=p.requires_grad)
                module._parameters[name] = fakes[id(p)]
    return model


def training_batch(config, task: str, batch: int, length: int, device="cpu") -> dict:
    """A training batch of the given shape, as the task's loop feeds the model: with a padded
    position (length-bucketed batches of several rows nearly always have one, and a mask
    with padding decides which attention kernel runs); a single row has no mask."""
    vocab = getattr(config, "vocab_size", 1000)
    ids = torch.randint(0, min(vocab, 1000), (batch, length), device=device)
    labels = ids if task == "causal-lm" else torch.zeros(batch, dtype=torch.long, device=device)
    if batch == 1:
        return {"input_ids": ids, "labels": labels}
    mask = torch.ones_like(ids)
    mask[-1, -1] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def spec(cfg: RunConfig, method: str) -> dict:
    """The configured method's knobs when it is this method, else its defaults."""
    knobs = dict(cfg.method) if cfg.method.get("name") == method else {"name": method}
    if method == "prompt":  # text init needs the tokenizer and weights; the cost is the same
        knobs["init"] = "random"
    return knobs


def state_bytes(model) -> dict[str, int]:
    """Weights (parameters + buffers, each storage once), gradients of the trainable
    parameters, and fused AdamW's state (exp_avg, exp_avg_sq, a float32 step per tensor)."""
    seen, weights = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.untyped_storage()._cdata
        if key not in seen:
            seen.add(key)
            weights += t.untyped_storage().nbytes()
    train = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in train)
    return {"weights": weights, "gradients": grads, "optimizer": 2 * grads + 4 * len(train)}


# ---------------------------------------------------------------- time


_PEAKS: dict[str, float] = {}


def peak_flops(precision: str) -> float:
    """This CPU's matmul FLOP/s in the precision (bf16 autocast multiplies in bf16), about a
    second to measure, once per process."""
    if precision not in _PEAKS:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        _PEAKS[precision] = measure.matmul_peak(dtype, n=1024, reps=30)
    return _PEAKS[precision]


def _key(model: str, method: str, device: str, precision: str) -> str:
    return f"{model}|{method}|{device}|{precision}"


def learned_efficiency(
    runs: Path, model: str, method: str, device: str, precision: str, peak: float
) -> tuple[float, str]:
    """Fraction of the matmul peak this method reaches here: calibrated, else the median of
    past runs in ``runs`` (same method, model and precision first, then the same method),
    else assumed."""
    cal = runs / CALIBRATION
    if cal.exists():
        table = json.loads(cal.read_text())
        if _key(model, method, device, precision) in table:
            return table[_key(model, method, device, precision)], "calibrated"
    from tunelab.results import find_runs, read_record

    past = []
    for d in find_runs(runs) if runs.exists() else []:
        try:
            rec = read_record(d)
        except TunelabError:
            continue
        if rec is None or not rec.ok or rec.method != method or not rec.flops.per_s:
            continue
        if rec.env.get("precision") != precision or not str(rec.env.get("device", "")).startswith(
            device
        ):
            continue
        past.append((rec.config.get("model", {}).get("name") == model, rec.flops.per_s / peak))
    for same_model in (True, False):
        found = [e for m, e in past if m or not same_model]
        if found:
            which = "this model" if same_model else "other models"
            return statistics.median(found), f"{len(found)} past run(s) of {which}"
    return ASSUMED_EFFICIENCY, "assumed"


def calibrate(cfg: RunConfig, methods: list[str], plan: Plan, runs: Path) -> None:
    """Real training steps of each method on this machine, on the configured data's own
    batches when its tokenizer loads (else synthetic rows of the mean length), with random
    weights from the config (above CALIBRATE_MAX_PARAMS a 2-layer model of the same
    architecture); the efficiency they reach is kept in ``runs/plan-calibration.json``."""
    from tunelab import fast
    from tunelab.optim import make_optimizer

    config = model_config(cfg.model.name, plan.task, 2)
    total = max((e.total for e in plan.estimates), default=0)
    if total > CALIBRATE_MAX_PARAMS:
        config = with_layers(config, 2)
    cal = runs / CALIBRATION
    table = json.loads(cal.read_text()) if cal.exists() else {}
    batches = calibration_batches(cfg, config, plan)
    for est in plan.estimates:
        if est.error:
            continue
        torch.manual_seed(0)
        method = build_method(spec(cfg, est.method))
        model = method.prepare(build(config, plan.task))
        if plan.device == "cpu" and cfg.train.fast_cpu:
            fast.install(model)
        opt = make_optimizer(method.param_groups(model, 1e-5, 0.0), 1e-5)
        flops_s = _flops_per_s(model, opt, batches, plan.precision == "bf16", cfg.train.grad_clip)
        table[_key(cfg.model.name, est.method, plan.device, plan.precision)] = (
            flops_s / plan.peak_flops
        )
    runs.mkdir(parents=True, exist_ok=True)
    from tunelab.results import write_text

    write_text(cal, json.dumps(table, indent=1))


def calibration_batches(cfg: RunConfig, config, plan: Plan, n: int = 12) -> list[tuple]:
    """(batch, real tokens) pairs: the first ``n`` length-bucketed training batches of the
    configured data, as the loop builds them; synthetic ones if the data cannot be encoded."""
    from tunelab.data import prepare_data, train_batches
    from tunelab.tasks import build_task

    try:
        data = prepare_data(cfg, lambda labels: build_task(cfg, labels))
    except TunelabError:
        tokens = max(1, round(plan.mean_tokens))
        batch = training_batch(config, plan.task, plan.batch_size, tokens)
        return [(batch, plan.batch_size * tokens)] * n
    lengths, pad = data.train.lengths, data.tokenizer.pad_token_id
    out = []
    for idx in train_batches(lengths, plan.batch_size, cfg.train.seed, 0)[:n]:
        batch = data.task.collate(data.train, idx, pad)
        batch.pop("targets", None), batch.pop("prompt_len", None)
        out.append((batch, sum(lengths[i] for i in idx)))
    return out


def _flops_per_s(model, opt, batches: list[tuple], bf16: bool, clip: float) -> float:
    """Training FLOP/s (6N rule on real tokens) over the batches, after two warm-up steps;
    each step as the loop runs it (autocast, backward, clipping, fused AdamW)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    per_token = measure.flops_per_token(model)["total"]

    def step(batch: dict) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    for batch, _ in batches[:2]:
        step(batch)
    t = time.perf_counter()
    for batch, _ in batches[2:]:
        step(batch)
    return per_token * sum(n for _, n in batches[2:]) / (time.perf_counter() - t)


# ---------------------------------------------------------------- one method


def trace(
    config, task: str, knobs: dict, batch: int, length: int, bf16: bool, fast_cpu: bool
) -> dict:
    """Parameters, state bytes, activation bytes and FLOPs per token of one method on a fake
    model for a [batch, length] training batch (what ``estimate`` and the tests compare with
    real runs). A forward fake tensors cannot follow (an op whose output shape depends on the
    data, such as ``nonzero``) has its activations measured on real shallow copies instead
    (``layer_scaled_activations``); ``activations_from`` says which route was taken."""
    from torch._subclasses.fake_tensor import (
        DataDependentOutputException,
        DynamicOutputShapeException,
        FakeTensorMode,
    )

    from tunelab import fast

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations, not ours
        model = fake_model(config, task, knobs, mode)
        with mode:
            if fast_cpu:
                fast.install(model)
            out = {
                **measure.count_params(model),
                **state_bytes(model),
                "flops_per_token": measure.flops_per_token(model)["total"],
            }
            data = training_batch(config, task, batch, length)
            try:  # traced on (fake) CPU tensors, so CPU autocast; on CUDA the ops run in bf16
                out["activations"], out["largest"] = measure.saved_activations(
                    model, data, "cpu" if bf16 else None
                )
                out["activations_from"] = "fake-tensor trace"
                return with_peak(out)
            except (DynamicOutputShapeException, DataDependentOutputException) as e:
                why = f"{type(e).__name__} ({e}) under fake tensors"
        out["activations"], out["largest"], n = layer_scaled_activations(
            config, task, knobs, batch, length, bf16, fast_cpu
        )
        out["activations_from"] = f"real 1- and 2-layer copies scaled to {n} layers: {why}"
        return with_peak(out)


def with_peak(t: dict) -> dict:
    """The traced parts plus the training peak they imply (see the module docstring)."""
    temporaries = 2 * t["largest"]
    peak = t["weights"] + t["optimizer"] + max(t["activations"], t["gradients"]) + temporaries
    return {**t, "temporaries": temporaries, "peak": peak}


def layer_scaled_activations(
    config, task: str, knobs: dict, batch: int, length: int, bf16: bool, fast_cpu: bool
) -> tuple[int, int, int]:
    """(activation bytes, largest saved tensor's bytes, layers): a real forward of 1- and
    2-layer copies of the model with the method applied, random weights, the same batch
    shape; every block adds the same
    activations, so N layers keep a1 + (N - 1) (a2 - a1). Costs the memory of two blocks, the
    embeddings and the head, never the whole model."""
    from tunelab import fast

    layers = config_layers(config)
    saved = []
    for k in (1, 2):
        torch.manual_seed(0)
        small = with_layers(config, k)
        model = build_method(knobs).prepare(build(small, task))
        if fast_cpu:
            fast.install(model)
        data = training_batch(small, task, batch, length)
        saved.append(measure.saved_activations(model, data, "cpu" if bf16 else None))
        del model
    (a1, largest), (a2, _) = saved
    return a1 + (layers - 1) * (a2 - a1), largest, layers


def estimate(cfg: RunConfig, method: str, plan: Plan, config, runs: Path) -> Estimate:
    """One method's row of the plan."""
    est = Estimate(method)
    fast_cpu = plan.device == "cpu" and cfg.train.fast_cpu
    try:
        t = trace(
            config,
            plan.task,
            spec(cfg, method),
            plan.batch_size,
            plan.longest,
            plan.precision == "bf16",
            fast_cpu,
        )
    except TunelabError as e:
        est.error = str(e)
        return est
    est.trainable, est.total = t["trainable"], t["total"]
    est.weights, est.gradients, est.optimizer = t["weights"], t["gradients"], t["optimizer"]
    est.activations, est.activations_from = t["activations"], t["activations_from"]
    est.temporaries, est.peak = t["temporaries"], t["peak"]
    rows = cfg.train.eval_batch_size
    est.eval_peak = est.weights + eval_working_set(config, plan.task, rows, plan.longest)
    est.flops_per_example = t["flops_per_token"] * plan.mean_tokens
    est.flops_per_epoch = est.flops_per_example * plan.examples
    est.efficiency, est.efficiency_from = learned_efficiency(
        runs, cfg.model.name, method, plan.device, plan.precision, plan.peak_flops
    )
    est.seconds = est.flops_per_epoch * plan.epochs / (plan.peak_flops * est.efficiency)
    est.saves_bytes = est.gradients if METHODS[method].saves_adapter else est.weights
    est.checkpoint_bytes = 2 * est.gradients + est.optimizer
    return est


def eval_working_set(config, task: str, rows: int, longest: int, word_tokens: int = 4) -> int:
    """Bytes one evaluation batch holds at once, beyond the weights (no gradients, nothing
    saved for backward): one layer's widest tensors (the MLP's inner activation and the
    attention scores, each with a copy in flight) for the rows; for a decoder scoring label
    words (``tasks.label_words``), also the key/value cache of a chunk of rows and the copy
    a word's forward extends, and the logits at the scored positions (``word_tokens`` per
    word). float32 throughout."""
    from tunelab.tasks.label_words import CACHE_BYTES, kv_bytes_per_token

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", 0) or 0
    inner = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", 1) or 1
    layer = rows * longest * max(inner or 4 * hidden, heads * longest) * 4 * 2
    if task != "causal-lm":
        return layer
    per_row = longest * kv_bytes_per_token(config)
    chunk = min(rows, max(1, CACHE_BYTES // max(1, per_row)))
    logits = chunk * word_tokens * (getattr(text, "vocab_size", 0) or 0) * 4
    return chunk * longest * max(inner or 4 * hidden, heads * longest) * 4 * 2 + (
        2 * chunk * per_row + logits
    )


# ---------------------------------------------------------------- the whole plan


def plan(
    cfg: RunConfig,
    methods: list[str],
    *,
    examples: int | None = None,
    device: str | None = None,
    memory: int | None = None,
    seconds: float | None = None,
    calibrate_rate: bool = False,
) -> Plan:
    """Estimate every method for ``cfg``'s model, data shape and machine."""
    from tunelab.optim import choose_precision

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    mode, why = choose_precision(cfg.train.mixed_precision, device)
    config = model_config(cfg.model.name, cfg.task, 2)  # a bad model name fails first
    mean, longest, n, labels, source = data_shape(cfg)
    if cfg.task == "classification":
        config.num_labels = labels
    runs = Path(cfg.out_dir)
    budget, budget_from = memory_budget(memory, device)
    stored = str(getattr(config, "dtype", None) or "").removeprefix("torch.")
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
        peak_flops=peak_flops(mode) if device == "cpu" else cuda_peak(mode),
        memory_budget=budget,
        memory_from=budget_from,
        time_budget=seconds,
    )
    p.estimates = [estimate(cfg, m, p, config, runs) for m in methods]
    if calibrate_rate:
        calibrate(cfg, methods, p, runs)
        p.estimates = [estimate(cfg, m, p, config, runs) for m in methods]
    for e in p.estimates:
        if not e.error:
            e.fits_memory = None if budget is None else max(e.peak, e.eval_peak) <= budget
            e.fits_time = None if seconds is None else e.seconds <= seconds
    p.suggestion = suggest(p)
    return p


def data_shape(cfg: RunConfig) -> tuple[float, int, int, int, str]:
    """(mean tokens per training example, tokens of the longest batch row, training
    examples, number of labels, where the token counts come from). From the configured data
    tokenized by the model's tokenizer; a model without one (a folder holding only the
    published config.json) counts data.max_length tokens for every example, and says so."""
    from tunelab.data import load_splits, prepare_data
    from tunelab.tasks import build_task

    try:
        data = prepare_data(cfg, lambda labels: build_task(cfg, labels))
    except NoTokenizer:
        splits = load_splits(cfg.data)
        n, labels = len(splits.train), max(2, len(splits.label_names))
        source = "data.max_length for every example: the model has no tokenizer"
        return float(cfg.data.max_length), cfg.data.max_length, n, labels, source
    lengths = data.train.lengths
    n_labels = max(2, len(data.splits.label_names))
    source = f"{data.splits.source}, tokenized"
    return sum(lengths) / len(lengths), max(lengths), len(lengths), n_labels, source


def memory_budget(memory: int | None, device: str) -> tuple[int | None, str]:
    if memory is not None:
        return memory, "--memory"
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, "this GPU's memory"
    if device == "cpu":
        import psutil

        return psutil.virtual_memory().total, "this machine's RAM"
    return None, "unknown"


def cuda_peak(precision: str) -> float:
    """bf16 / fp32 matmul FLOP/s of this GPU (measured), or an H100's dense peak (989 /
    67 TFLOP/s, tf32 off) when planning for CUDA on a machine without one."""
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        n = 4096
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        return 10 * 2 * n**3 / (time.perf_counter() - t)
    return 989e12 if precision == "bf16" else 67e12


def largest_batch(e: Estimate, p: Plan) -> int:
    """The largest batch size whose peak fits the memory budget (activations and temporaries
    scale with it; the gradients do not)."""
    if p.memory_budget is None or not e.activations:
        return p.batch_size
    room = p.memory_budget - (e.weights + e.optimizer)
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
    first = next((m for m in ("full", "llrd") if m in by), None)
    if first:
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
    e = min(fit, key=lambda x: (x.method != "lora", x.peak))
    return (
        f"{e.method}: full fine-tuning does not fit, {e.method} does ({gib(e.peak)}, "
        f"{duration(e.seconds)}) training {e.trainable:,} parameters"
    )


# ---------------------------------------------------------------- units and printing

_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*$", re.I)
_TIME = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms]?)", re.I)


def parse_size(text: str) -> int:
    """'16GB' / '16G' / '16GiB' / '512MB' -> bytes (binary units: a 16GB GPU has 16 GiB)."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"--memory {text!r}: give a size such as 16GB, 512MB or 1.5TB")
    scale = 1024 ** "bkmgt".index((m.group(2) or "b").lower())
    return int(float(m.group(1)) * scale)


def parse_duration(text: str) -> float:
    """'2h' / '90m' / '1h30m' / '45s' / '3600' -> seconds."""
    unit = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}
    parts = _TIME.findall(text)
    if not parts or "".join(a + b for a, b in parts) != re.sub(r"\s", "", text):
        raise ConfigError(f"--time {text!r}: give a duration such as 2h, 90m, 1h30m or 45s")
    return sum(float(n) * unit[u.lower()] for n, u in parts)


def gib(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def pct(part: float, whole: float) -> str:
    share = 100 * part / max(whole, 1)
    return f"{share:.0f}%" if share >= 10 else f"{share:.2g}%"


def duration(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def header(p: Plan) -> str:
    """What the plan assumed: model, task, device, precision, dtypes, batch shape, budgets."""
    stored = (
        f" (the checkpoint is stored in {p.stored_dtype}; training keeps {p.weights_dtype} weights)"
        if p.stored_dtype and p.stored_dtype != p.weights_dtype
        else ""
    )
    return (
        f"plan for {p.model} ({p.task}) on {p.device}, "
        f"{'bf16 autocast' if p.precision == 'bf16' else 'fp32'} ({p.precision_why}); weights "
        f"in {p.weights_dtype}{stored}\n"
        f"batch {p.batch_size} x {p.longest} tokens at the peak (mean {p.mean_tokens:.0f} tokens"
        f" per example, from {p.tokens_from}); {p.examples:,} examples x {p.epochs:g} epoch(s)\n"
        f"memory budget: {gib(p.memory_budget) if p.memory_budget else 'none'} ({p.memory_from})"
        f"; time budget: {duration(p.time_budget) if p.time_budget else 'none'}; matmul peak "
        f"{p.peak_flops / 1e9:,.0f} GFLOP/s\n"
    )


def table(p: Plan) -> str:
    """The plan as text: a header saying what was assumed, one row per method."""
    head = header(p)
    cols = [
        "method", "trainable", "weights", "grads", "AdamW", "activations", "peak",
        "eval peak", "GFLOP/ex", "train time", "rate from", "saves", "fits",
    ]  # fmt: skip
    rows = []
    for e in p.estimates:
        if e.error:
            rows.append([e.method, "refused (below)"] + [""] * (len(cols) - 2))
            continue
        fits = {True: "yes", False: "NO", None: "-"}
        fit = (
            fits[e.fits_memory]
            if e.fits_time is None
            else f"{fits[e.fits_memory]}/{fits[e.fits_time]}"
        )
        rows.append(
            [
                e.method,
                f"{e.trainable:,} ({pct(e.trainable, e.total)})",
                gib(e.weights),
                gib(e.gradients),
                gib(e.optimizer),
                gib(e.activations),
                gib(e.peak),
                gib(e.eval_peak),
                f"{e.flops_per_example / 1e9:.1f}",
                duration(e.seconds),
                f"{e.efficiency:.0%} {e.efficiency_from}",
                gib(e.saves_bytes),
                fit,
            ]
        )
    widths = [max(len(str(r[i])) for r in [cols, *rows]) for i in range(len(cols))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [cols, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    fits_note = "fits = memory/time" if p.time_budget else "fits = memory"
    refused = "".join(f"\n{e.method} refused: {e.error}" for e in p.estimates if e.error)
    refused += "".join(
        f"\n{e.method} activations from {e.activations_from}"
        for e in p.estimates
        if e.activations_from and e.activations_from != "fake-tensor trace"
    )
    return (
        head
        + "\n".join(lines)
        + f"\n({fits_note}; peak = weights + AdamW + max(activations, grads) + backward's "
        f"temporaries (2x the largest saved tensor); eval peak = weights + one evaluation batch: "
        f"a layer's widest tensors, and a decoder's key/value cache for label words){refused}"
        + f"\n\nsuggestion: {p.suggestion}"
    )
