"""Time: this machine's matmul peak and the share of it a method reaches: calibrated by real
steps (``--calibrate``), else learned from past run records, else assumed."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from tunelab import measure
from tunelab.anatomy import with_layers
from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.methods import build_method
from tunelab.planning.costs import Plan
from tunelab.planning.trace import build, model_config, spec, training_batch

ASSUMED_EFFICIENCY = 0.5  # bench/RESULTS.md: 54-71% of the fp32 matmul peak on MiniLM
CALIBRATION = "plan-calibration.json"
CALIBRATE_MAX_PARAMS = 400e6  # calibrate on the real architecture up to this size

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
        if rec.env.precision != precision or not rec.env.device.startswith(device):
            continue
        past.append((rec.config.model.name == model, rec.flops.per_s / peak))
    for same_model in (True, False):
        found = [e for m, e in past if m or not same_model]
        if found:
            which = "this model" if same_model else "other models"
            return statistics.median(found), f"{len(found)} past run(s) of {which}"
    return ASSUMED_EFFICIENCY, "assumed"


def calibrate(cfg: RunConfig, methods: list[str], plan: Plan, runs: Path) -> None:
    """Real training steps of each method on this machine's ``plan.device`` in the plan's
    precision, on the configured data's own batches when its tokenizer loads (else synthetic
    rows of the mean length), with random weights from the config (above
    CALIBRATE_MAX_PARAMS a 2-layer model of the same architecture); the efficiency they
    reach is kept in ``runs/plan-calibration.json`` under that device and precision."""
    from tunelab import fast
    from tunelab.optim import make_optimizer

    if plan.device == "cuda" and not torch.cuda.is_available():
        raise TunelabError(
            "plan --calibrate times real steps on this machine, which has no CUDA GPU: run it "
            "on the GPU machine, or drop --calibrate (or plan for --device cpu)"
        )
    device = torch.device(plan.device)
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
        model = method.prepare(build(config, plan.task)).to(device)
        if plan.device == "cpu" and cfg.train.fast_cpu:
            fast.install(model)
        opt = make_optimizer(method.param_groups(model, 1e-5, 0.0), 1e-5)
        flops_s = _flops_per_s(model, opt, batches, plan.precision, device, cfg.train.grad_clip)
        table[_key(cfg.model.name, est.method, plan.device, plan.precision)] = (
            flops_s / plan.peak_flops
        )
    runs.mkdir(parents=True, exist_ok=True)
    from tunelab.files import write_text

    write_text(cal, json.dumps(table, indent=1))


def calibration_batches(cfg: RunConfig, config, plan: Plan, n: int = 12) -> list[tuple]:
    """(batch, real tokens) pairs: the first ``n`` length-bucketed training batches of the
    configured data, as the loop builds them; synthetic ones if the data cannot be encoded."""
    from tunelab.batches import train_batches
    from tunelab.tasks import prepare_data

    try:
        data = prepare_data(cfg)
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


def _flops_per_s(
    model, opt, batches: list[tuple], precision: str, device: torch.device, clip: float
) -> float:
    """Training FLOP/s (6N rule on real tokens) over the batches, after two warm-up steps;
    each step as the loop runs it (autocast, backward, clipping, fused AdamW) on ``device``."""
    from tunelab.precision import autocast

    trainable = [p for p in model.parameters() if p.requires_grad]
    per_token = measure.flops_per_token(model)["total"]
    batches = [({k: v.to(device) for k, v in b.items()}, n) for b, n in batches]

    def step(batch: dict) -> None:
        with autocast(precision, device):
            loss = model(**batch).loss
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    for batch, _ in batches[:2]:
        step(batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for batch, _ in batches[2:]:
        step(batch)
    sync()  # the clock must include the queued kernels
    return per_token * sum(n for _, n in batches[2:]) / (time.perf_counter() - t)


H100_DENSE = {"bf16": 989e12, "fp16": 989e12, "no": 67e12}  # FLOP/s, spec sheet, tf32 off


def cuda_peak(precision: str) -> tuple[float, str]:
    """(matmul FLOP/s of this GPU in the precision, measured; where the figure comes from),
    or an H100 SXM's dense spec-sheet peak, said so, when planning for CUDA on a machine
    without one."""
    if not torch.cuda.is_available():
        return H100_DENSE[precision], (
            "assumed: an H100's dense spec-sheet peak, no GPU here to measure; "
            "run the plan on the GPU machine for its own"
        )
    from tunelab.precision import compute_dtype

    n, dtype = 4096, compute_dtype(precision)
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return 10 * 2 * n**3 / (time.perf_counter() - t), f"measured on {torch.cuda.get_device_name()}"
