"""What a run costs and achieves: parameters, memory, FLOPs, bytes on disk, the environment,
and the evaluation of a split."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path

import psutil
import torch
from torch import nn

from tunelab import batches as B
from tunelab.anatomy import anatomy, experts
from tunelab.loggers import EvalProgress
from tunelab.precision import autocast
from tunelab.results import Scores
from tunelab.sharding import eval_share

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "tunelab")


def count_params(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts (peft's copies of the head counted once each);
    ``active``: the parameters one token runs through, less than the total for a mixture of
    experts (each token runs ``per_token`` of the ``n`` routed experts of a layer)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    moe = experts(model)
    routed = sum(p.numel() for p in model.parameters() if moe and id(p) in moe.params)
    active = total - round(routed * (1 - moe.active_fraction)) if moe else total
    return {"trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / total,
            "active": active}  # fmt: skip


def flops_per_token(model: nn.Module) -> dict[str, int]:
    """Training FLOPs per real token, by the 6N rule split into its parts (Kaplan et al. 2020).

    forward 2N (N = non-embedding weights: embeddings are lookups); backward through
    activations 2N' where N' counts the weights at or above the lowest trainable layer
    (nothing below it needs a gradient); weight gradients 2T for T trainable non-embedding
    weights. Attention-score FLOPs (4 L s d per token) are left out: under 2% for the short
    sequences here. Blocks shared across layers (ALBERT) count once per layer that runs them.
    A mixture of experts' routed experts count for the share of them a token runs.
    """
    a, moe = anatomy(model), experts(model)
    named = [(name, p, a.depth(name)) for name, p in model.named_parameters()]
    lowest = min((d for _, p, d in named if p.requires_grad), default=a.n_blocks + 1)
    reuse = a.n_layers / a.n_blocks if a.n_blocks else 1
    n = bwd = trainable = 0
    for _, p, d in named:
        if d == 0:  # embedding tables and soft prompts: lookups, no matmul
            continue
        size = round(p.numel() * reuse) if d <= a.n_blocks else p.numel()
        size = round(size * moe.active_fraction) if moe and id(p) in moe.params else size
        n += size
        bwd += size if d >= lowest else 0
        trainable += size if p.requires_grad else 0
    return {
        "forward": 2 * n,
        "backward": 2 * bwd + 2 * trainable,
        "total": 2 * n + 2 * bwd + 2 * trainable,
    }


def saved_activation_bytes(model: nn.Module, batch: dict, autocast: str | None = None) -> int:
    """Bytes autograd keeps for backward in one training forward (``saved_activations``)."""
    return saved_activations(model, batch, autocast)[0]


def saved_activations(
    model: nn.Module, batch: dict, autocast: str | None = None
) -> tuple[int, int]:
    """Bytes autograd keeps for backward in one training forward of ``batch``: every tensor
    saved by a differentiable op, counted once per storage (views and reuses share one), the
    model's own parameters left out (they are weights, not activations). ``autocast``
    ("cpu" / "cuda") runs the forward under bf16 autocast, whose cached bf16 weight copies
    then count here. Works on real tensors and under FakeTensorMode (tunelab.planning).
    Returns (total bytes, bytes of the largest saved storage)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen.setdefault(storage._cdata, storage.nbytes())
        return t

    was_training = model.training
    model.train()
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast(autocast or "cpu", dtype=torch.bfloat16, enabled=autocast is not None),
    ):
        model(**batch)
    model.train(was_training)
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    kept = [n for key, n in seen.items() if key not in weights]
    return sum(kept), max(kept, default=0)


def allocation_peak(fn) -> int:
    """The high-water mark of the tensor bytes ``fn()`` allocates above what was live before
    it, from torch.profiler's allocation and free events (CPU). The benches and tests check
    the plan's estimates with it; the plan itself never uses it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return peak


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 10) -> float:
    """Best observed FLOP/s of an n x n matrix product in ``dtype`` on this machine's CPU, over
    the two operand layouts a training step uses: ``a @ b`` and ``a @ b.T`` (nn.Linear's).
    One layout alone can miss the peak by 20x: bf16 ``a @ b`` on a CPU without native bf16
    (AVX2) takes a fallback at ~1 GFLOP/s where ``a @ b.T`` reaches ~17."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = math.inf
    for product in (lambda: torch.nn.functional.linear(a, b), lambda: a @ b):
        # the first call warms up; a layout whose first call is far off the best so far (the
        # fallback: seconds a call) is not repeated
        for i in range(reps + 1):
            t = time.perf_counter()
            product()
            seconds = time.perf_counter() - t
            best = min(best, seconds) if i else best
            if i == 0 and seconds > 4 * best:
                break
    return 2 * n**3 / best


@torch.inference_mode()
def evaluate(
    model, task, enc: B.Encoded, batch_size: int, pad_id: int, device, precision: str = "no",
    what: str = "validation", per_example: bool = False,
) -> Scores:  # fmt: skip
    """Mean loss and the task's metrics on a split; batches sorted by length, no autograd,
    every forward under the autocast of ``precision`` (a run's: ``env.precision``); ``what``
    names the split in the progress line (loggers.EvalProgress). ``per_example``: also which
    examples were predicted right (``Scores.correct``, in the split's order: what a paired
    test of two runs on the same rows reads), for tasks with an accuracy."""
    was_training = model.training
    model.eval()
    preds, labels, order, loss_sum = [], [], [], 0.0
    rank, world = _process()
    mine = eval_share(model, B.eval_batches(enc.lengths, batch_size), rank, world)
    with EvalProgress(what, sum(len(i) for i, ok in mine if ok), main_process=rank == 0) as shown:
        for idx, ok in mine:
            batch = {k: v.to(device) for k, v in task.collate(enc, idx, pad_id).items()}
            with autocast(precision, device):
                loss, pred = task.forward(model, batch)
            if not ok:  # a sharded model's extra forward, to keep pace with the others
                continue
            loss_sum += loss.float().item() * len(idx)
            preds.append(pred.cpu())
            labels.append(task.targets(batch).cpu())
            order.append(torch.as_tensor(idx, dtype=torch.long))
            shown.update(len(idx))
    model.train(was_training)
    preds, labels, order, loss_sum = _gather(preds, labels, order, loss_sum, world)
    scores = Scores.of({"loss": loss_sum / len(enc), **task.metrics(preds, labels)})
    if not task.has_accuracy:  # a language model's own quality
        scores.perplexity = math.exp(min(scores.loss, 50.0))
    elif per_example:
        right = (preds == labels)[torch.argsort(order)]
        scores.correct = "".join("1" if x else "0" for x in right.tolist())
    return scores


def _process() -> tuple[int, int]:
    """(rank, number of processes) of a torch.distributed run (DDP), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(preds: list, labels: list, order: list, loss_sum: float, world: int):
    """Every process's predictions, labels, example indices and loss sum, joined: each
    example was scored by exactly one process, and every process gets the same metrics."""
    none = torch.empty(0, dtype=torch.long)  # a process that got no batch
    mine = (*(torch.cat(x) if x else none for x in (preds, labels, order)), loss_sum)
    if world == 1:
        return mine
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    return (*(torch.cat([p[i] for p in parts]) for i in range(3)), sum(p[3] for p in parts))


_ZERO_SHOT: dict[tuple, dict] = {}


def zero_shot(cfg, data, model, device, precision: str = "no") -> dict[str, Scores]:
    """The untrained model's metrics on validation and test, for tasks where that is a
    baseline (a decoder scoring label words), in the run's precision (and quantisation: a
    4-bit base is scored as loaded, where bitsandbytes placed it); once per model, data,
    precision and quantisation within the process."""
    if not data.task.zero_shot:
        return {}
    quantized = getattr(model, "is_loaded_in_4bit", False)
    key = (cfg.model.name, cfg.task, json.dumps(vars(cfg.data), sort_keys=True), precision,
           quantized, str(device))  # fmt: skip
    if key not in _ZERO_SHOT:
        if not quantized:  # a 4-bit model cannot move: it was loaded on its device
            model.to(device)
        bs, pad = cfg.train.eval_batch_size, data.tokenizer.pad_token_id
        _ZERO_SHOT[key] = {
            split: evaluate(
                model,
                data.task,
                getattr(data, split),
                bs,
                pad,
                device,
                precision,
                f"zero-shot {split}",
            )  # fmt: skip
            for split in ("validation", "test")
        }
    return _ZERO_SHOT[key]


def improved(val: Scores, best: Scores | None, metric: str) -> bool:
    """Whether a validation beats the best so far (a loss by being lower)."""
    if best is None:
        return True
    new, old = val.value(metric), best.value(metric)
    return new < old if metric == "loss" else new > old


def settled_rss() -> int:
    """Process RSS after returning freed memory to the OS (so earlier runs in the same process
    do not hide or inflate this run's memory)."""
    from tunelab.fast import release_freed

    release_freed()
    return psutil.Process().memory_info().rss


def settled_memory(device: torch.device) -> int:
    """The baseline a run's peak memory is measured above, taken before its model loads: on
    CUDA the bytes still allocated (an earlier run of the same compare or tune, freed and its
    cached blocks given back to the driver first), else the settled process RSS."""
    if device.type != "cuda":
        return settled_rss()
    import gc

    gc.collect()  # an earlier run's model and optimizer, unreachable now
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


class PeakMemory:
    """Peak memory of a run: CUDA max_memory_allocated, or on CPU the process's peak RSS,
    sampled every 20 ms by a thread (RSS peaks inside backward), minus ``baseline``
    (``settled_memory`` before the model was loaded), so weights, gradients, optimizer state
    and activations count and the data, libraries and earlier runs do not."""

    def __init__(self, device: torch.device, baseline: int = 0):
        self.cuda = device.type == "cuda"
        self.baseline = baseline
        self.peak = 0
        self._paused = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            proc = psutil.Process()
            self.peak = proc.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(0.02):
                    if not self._paused:
                        self.peak = max(self.peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    @contextlib.contextmanager
    def paused(self):
        """Leave a stretch (validation) out of the peak: it measures training only."""
        if self.cuda:
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())
        self._paused = True
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            else:
                settled_rss()  # give evaluation's buffers back before sampling again
            self._paused = False

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())
        elif self._thread:
            self._stop.set()
            self._thread.join()

    @property
    def used(self) -> int:
        return self.peak - self.baseline

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.cuda else "process_rss_above_baseline"


def weights_bytes(folder: Path) -> int:
    """Bytes of the weight files a method must save (adapter or whole model), not tokenizer."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.exists() else 0


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (e.g. "AMD EPYC 9454"), else the
    architecture (``platform.processor()`` says only "x86_64" on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    except OSError:
        names = []
    return (names[0] if names else "") or platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "packages": versions,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": gpu,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }


def machine_busy_s() -> float | None:
    """CPU seconds every process on the machine has used (user, system, interrupts and a
    hypervisor's steal), from /proc/stat; None where it is not readable or counts other CPUs
    than this process can see (a container on a larger host)."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    cpus = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
    if cpus != os.cpu_count():
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, lines[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_usage(device: torch.device, own_s: float, others_s: float) -> tuple:
    """(this process's CPU s, other processes' CPU s, threads, cores) over the training
    steps, for the record's contention check; nothing on a GPU (the CPU only feeds it)."""
    if device.type != "cpu":
        return (0.0, 0.0, 0, 0)
    cores = (os.cpu_count() or 0) if machine_busy_s() is not None else 0
    return own_s, others_s, torch.get_num_threads(), cores


class Window:
    """Training statistics (loss, accuracy, throughput) between two logging steps. Loss, hits
    and the NaN flag stay on the device and are read only at logging steps: reading them every
    step would force a host sync and stall the pipeline."""

    def __init__(self, device: torch.device, accuracy: bool = True):
        self.accuracy = accuracy  # False: the task has no hits to count (instruction data)
        self.loss = torch.zeros((), device=device)
        self.hits = torch.zeros((), device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.micro = self.examples = self.tokens = 0
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()  # all of this process's threads
        self.busy_start = machine_busy_s()

    def add(self, loss: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor, tokens: int):
        """One micro-batch: its mean loss, predictions and real (non-pad) token count."""
        loss = loss.detach()
        self.loss += loss
        self.bad |= ~torch.isfinite(loss)
        self.hits += (preds == labels).sum()
        self.micro += 1
        self.examples += len(labels)
        self.tokens += tokens  # counted on the host from the lengths: no device sync

    def summary(self) -> dict[str, float]:
        """Mean loss and accuracy, throughput and the seconds since the window opened."""
        if self.loss.device.type == "cuda":
            torch.cuda.synchronize()  # the clock must include the queued kernels
        seconds = max(time.perf_counter() - self.start, 1e-9)
        acc = {"train_accuracy": self.hits.item() / max(1, self.examples)} if self.accuracy else {}
        return {
            "train_loss": self.loss.item() / max(1, self.micro),
            **acc,
            "examples_per_s": self.examples / seconds,
            "tokens_per_s": self.tokens / seconds,
            "seconds": seconds,
            "cpu_seconds": (cpu := time.process_time() - self.cpu_start),
            "other_cpu_seconds": max(
                0.0, (machine_busy_s() or 0.0) - (self.busy_start or 0.0) - cpu
            )
            if self.busy_start is not None
            else 0.0,
        }
