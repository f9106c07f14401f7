"""Units (sizes, durations) and the plan as text."""

from __future__ import annotations

import re

from tunelab.errors import ConfigError
from tunelab.planning.costs import Plan

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
        f"{'fp32' if p.precision == 'no' else p.precision + ' autocast'} ({p.precision_why}); "
        f"weights "
        f"in {p.weights_dtype}{stored}\n"
        f"batch {p.batch_size} x {p.longest} tokens at the peak (mean {p.mean_tokens:.0f} tokens"
        f" per example, from {p.tokens_from}); {p.examples:,} examples x {p.epochs:g} epoch(s)\n"
        f"memory budget: {gib(p.memory_budget) if p.memory_budget else 'none'} ({p.memory_from})"
        f"; time budget: {duration(p.time_budget) if p.time_budget else 'none'}; matmul peak "
        f"{p.peak_flops / 1e9:,.0f} GFLOP/s ({p.peak_from})\n" + processes_line(p) + experts_line(p)
    )


def processes_line(p: Plan) -> str:
    """Several processes: the memory columns are one process's share."""
    if p.processes == 1:
        return ""
    if p.fsdp:
        return (
            f"per process, FSDP over {p.processes} processes: weights, gradients and AdamW "
            f"1/{p.processes} each, plus the root's and two blocks' weights gathered whole\n"
        )
    return f"per process, DDP over {p.processes} processes: a whole copy each + gradient buckets\n"


def experts_line(p: Plan) -> str:
    """A mixture of experts' total and active parameters, and what each decides."""
    from tunelab.methods import METHODS

    every = [e for e in p.estimates if not e.error and METHODS[e.method].trains_every_weight]
    full = every[0] if every else None
    e = full or next((e for e in p.estimates if not e.error), None)
    if not p.experts or e is None:
        return ""
    n, k = p.experts
    return (
        f"mixture of experts: {n} routed experts a layer, {k} run for each token: "
        f"{e.total:,} parameters{'' if full else ' (with the adapter)'}, {e.active:,} active "
        f"per token (FLOPs and time count the active ones; memory holds every expert)\n"
    )


def table(p: Plan) -> str:
    """The plan as text: a header saying what was assumed, one row per method."""
    head = header(p)
    cols = [
        "method", "trainable", "weights", "grads", "AdamW", "activations", "peak",
        "eval peak", "process peak", "GFLOP/ex", "train time", "rate from", "saves", "fits",
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
                f"{gib(e.process.expected)} ({gib(e.process.low)}-{gib(e.process.high)})",
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
    kind = next((e.process.kind for e in p.estimates if e.process.kind), "")
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
        f"a layer's widest tensors, and a decoder's key/value cache for label words; process "
        f"peak = what the OS sees, expected (low-high): {kind}, from tensors by the overhead "
        f"model of tunelab.planning.process; fits compares its high end with the budget){refused}"
        + f"\n\nsuggestion: {p.suggestion}"
    )
