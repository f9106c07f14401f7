"""ONE explicit, method-agnostic training loop (on accelerate: CPU, CUDA, several GPUs).

Read top to bottom: ``run`` loads data and model, lets the method ``prepare`` the model and
give its ``param_groups``, trains with AdamW + warmup/decay, validates regularly, keeps the
best checkpoint, tests it, saves it, and writes the run record.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from tunelab import data as D
from tunelab import fast
from tunelab.config import RunConfig, to_dict
from tunelab.errors import RunFailed, TrainingDiverged, TunelabError
from tunelab.measure import (
    PeakMemory,
    count_params,
    environment,
    flops_per_token,
    settled_rss,
    weights_bytes,
)
from tunelab.methods import build_method, knobs
from tunelab.models import load_model, load_tokenizer
from tunelab.results import (
    METRICS,
    RESULT,
    append_metrics,
    read_metrics,
    read_result,
    write_json,
    write_text,
)

STATE = "state.pt"  # resumable training state, removed when the run finishes


@dataclass
class Prepared:
    """Data shared by the runs of a comparison: loaded, split and tokenized once."""

    splits: D.Splits
    tokenizer: object
    train: D.Encoded
    validation: D.Encoded
    test: D.Encoded


_CACHE: dict[tuple, Prepared] = {}


def prepare_data(cfg: RunConfig) -> Prepared:
    """Load + tokenize (cached per data config, model and max length within the process)."""
    key = (tuple(sorted(vars(cfg.data).items())), cfg.model.name)
    if key not in _CACHE:
        splits = D.load_splits(cfg.data)
        tok = load_tokenizer(cfg.model.name)
        enc = [
            D.encode(s, tok, cfg.data.max_length)
            for s in (splits.train, splits.validation, splits.test)
        ]
        _CACHE[key] = Prepared(splits, tok, *enc)
    return _CACHE[key]


def metrics(preds: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (mean over classes of 2PR/(P+R), 0 for a class never hit)."""
    acc = (preds == labels).float().mean().item()
    f1s = []
    for c in range(n_classes):
        tp = ((preds == c) & (labels == c)).sum().item()
        fp = ((preds == c) & (labels != c)).sum().item()
        fn = ((preds != c) & (labels == c)).sum().item()
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": acc, "macro_f1": sum(f1s) / n_classes}


@torch.inference_mode()
def evaluate(
    model, enc: D.Encoded, batch_size: int, pad_id: int, device, n_classes: int
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 on a split; batches sorted by length, no autograd."""
    was_training = model.training
    model.eval()
    preds, loss_sum = [], 0.0
    for batch in D.iterate(enc, D.eval_batches(enc.lengths, batch_size), pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        loss_sum += out.loss.float().item() * len(batch["labels"])
        preds.append((batch["labels"], out.logits.argmax(-1)))
    model.train(was_training)
    labels = torch.cat([p[0] for p in preds]).cpu()
    pred = torch.cat([p[1] for p in preds]).cpu()
    return {"loss": loss_sum / len(enc), **metrics(pred, labels, n_classes)}


def make_optimizer(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW, fused where torch has a fused kernel for the device (CPU and CUDA in torch
    >= 2.4: one kernel for the whole update, +8% examples/s on full fine-tuning of MiniLM on
    2 CPU cores), else the multi-tensor (foreach) implementation."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, foreach=True)


def make_scheduler(optimizer, cfg: RunConfig, total_steps: int):
    from transformers import get_scheduler

    kind = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    warmup = math.ceil(cfg.train.warmup * total_steps)  # as transformers' Trainer rounds it
    return get_scheduler(
        kind[cfg.train.schedule], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.out_dir) / (cfg.name or f"{cfg.method_name}-seed{cfg.train.seed}")


def claim_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber a run unless told to overwrite; resume keeps it."""
    if (run_dir / RESULT).exists() or (run_dir / STATE).exists():
        if resume and (run_dir / STATE).exists():
            (run_dir / RESULT).unlink(missing_ok=True)  # an "interrupted" record goes on
        elif overwrite:
            shutil.rmtree(run_dir)
        elif not resume:
            raise TunelabError(
                f"output folder {str(run_dir)!r} already holds a run; pass "
                f"--overwrite to replace it, --resume to continue it, or pick "
                f"another --out / name"
            )
    run_dir.mkdir(parents=True, exist_ok=True)


@dataclass
class Progress:
    """Everything the loop must carry across an interruption."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_time: float = 0.0
    eval_time: float = 0.0
    examples: int = 0
    tokens: int = 0
    best: dict = field(default_factory=dict)
    best_step: int = -1
    evals_since_best: int = 0
    curve: list = field(default_factory=list)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
    }


def load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def run(cfg: RunConfig, overwrite: bool = False, resume: bool = False, on_eval=None) -> dict:
    """Train, validate, test and save one run; return its record (also in result.json).

    ``on_eval(progress)`` is called after each validation (after the resumable state is
    saved), e.g. to watch a run or stop it.
    """
    run_dir = run_dir_for(cfg)
    try:
        return _run(cfg, run_dir, overwrite, resume, on_eval)
    except KeyboardInterrupt:
        if (run_dir / STATE).exists() and not (run_dir / RESULT).exists():
            write_json(
                run_dir / RESULT,
                {
                    "name": run_dir.name,
                    "method": cfg.method_name,
                    "config": to_dict(cfg),
                    "status": "interrupted",
                    "reason": "interrupted; continue it with the same command and --resume",
                },
            )
        raise


def _run(cfg: RunConfig, run_dir: Path, overwrite: bool, resume: bool, on_eval) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    done = read_result(run_dir) if resume else None
    if done and done.get("status") == "ok":
        return done
    method = build_method(cfg.method)  # bad method names/knobs fail before touching disk
    claim_run_dir(run_dir, overwrite, resume)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tc = cfg.train
    lr = tc.lr if tc.lr is not None else method.lr

    mp = tc.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    trackers = None if cfg.tracker == "none" else cfg.tracker
    acc = Accelerator(mixed_precision=mp, log_with=trackers, project_dir=str(run_dir))
    fast_paths = tc.fast_cpu and acc.device.type == "cpu"
    if fast_paths:
        fast.tune_allocator()
    set_seed(tc.seed)
    data = prepare_data(cfg)
    pad_id = data.tokenizer.pad_token_id
    n_classes = len(data.splits.label_names)
    rss_before_model = settled_rss()
    model = load_model(cfg.model.name, data.splits.label_names, pad_id)
    try:
        model = method.prepare(model)
    except TunelabError as e:
        _fail(
            run_dir,
            {"name": run_dir.name, "method": method.name, "config": to_dict(cfg)},
            Progress(),
            str(e),
            RunFailed,
        )
    swapped = fast.install(model) if fast_paths else {}
    params = count_params(model)
    flops = flops_per_token(model)
    optimizer = make_optimizer(method.param_groups(model, lr, tc.weight_decay), lr)
    per_epoch = math.ceil(len(data.train) / (tc.batch_size * acc.num_processes)) // tc.grad_accum
    per_epoch = max(per_epoch, 1)
    total_steps = tc.max_steps or max(1, int(per_epoch * tc.epochs))
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    model, optimizer = acc.prepare(model, optimizer)
    # ceil: the last in-epoch validation lands on the epoch end, not one step before it
    eval_every = tc.eval_every or max(1, math.ceil(per_epoch / tc.evals_per_epoch))

    pg = Progress()
    best_state: dict[str, torch.Tensor] = {}  # trainable weights of the best validation so far
    if resume and (run_dir / STATE).exists():
        pg, best_state = _load_state(run_dir / STATE, acc.unwrap_model(model), optimizer, scheduler)
        # rows logged after the saved state will be logged again
        kept = [r for r in read_metrics(run_dir) if r["step"] <= pg.step]
        write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in kept))
    else:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    if trackers:
        acc.init_trackers("tb", config=_flat(to_dict(cfg)))

    record = {
        "name": run_dir.name,
        "status": "running",
        "method": method.name,
        "method_knobs": knobs(method),
        "lr": lr,
        "config": to_dict(cfg),
        "params": params,
        "flops_per_token": flops,
        "fast_cpu": swapped,
        "data": {
            "dataset": data.splits.source,
            "labels": data.splits.label_names,
            "train": len(data.train),
            "validation": len(data.validation),
            "test": len(data.test),
        },
        "env": environment(acc.device),
    }

    def validate() -> bool:
        """Validate, track the best checkpoint; return True when patience ran out."""
        t0 = time.perf_counter()
        val = evaluate(model, data.validation, tc.eval_batch_size, pad_id, acc.device, n_classes)
        pg.eval_time += time.perf_counter() - t0
        point = {
            "step": pg.step,
            "epoch": pg.step / per_epoch,
            "train_time_s": pg.train_time,
            **{f"val_{k}": v for k, v in val.items()},
        }
        pg.curve.append(point)
        if acc.is_main_process:  # one writer for the run folder under several processes
            append_metrics(run_dir, point)
        acc.log({f"val/{k}": v for k, v in val.items()}, step=pg.step)
        if not pg.best or val[tc.metric] > pg.best[tc.metric]:
            pg.best, pg.best_step, pg.evals_since_best = val, pg.step, 0
            best_state.clear()
            best_state.update(trainable_state(acc.unwrap_model(model)))
        else:
            pg.evals_since_best += 1
        if pg.step < total_steps and acc.is_main_process:
            _save_state(
                run_dir / STATE, acc.unwrap_model(model), optimizer, scheduler, pg, best_state
            )
        if on_eval:
            on_eval(pg)
        return tc.patience > 0 and pg.evals_since_best >= tc.patience

    bar = tqdm(
        total=total_steps,
        initial=pg.step,
        desc=run_dir.name,
        unit="step",
        disable=not (sys.stderr.isatty() and acc.is_main_process),
        dynamic_ncols=True,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    lengths = data.train.lengths
    model.train()
    stop = False
    with PeakMemory(acc.device, rss_before_model) as mem:
        win = Window(acc.device)
        while pg.step < total_steps and not stop:
            batches = D.train_batches(lengths, tc.batch_size, tc.seed, pg.epoch)
            batches = batches[acc.process_index :: acc.num_processes]
            steps = [batches[i : i + tc.grad_accum] for i in range(0, len(batches), tc.grad_accum)]
            steps = [s for s in steps if len(s) == tc.grad_accum]
            while pg.batch_in_epoch < len(steps) and pg.step < total_steps and not stop:
                micro = steps[pg.batch_in_epoch]
                for j, idx in enumerate(micro):
                    batch = {
                        k: v.to(acc.device, non_blocking=True)
                        for k, v in D.collate(data.train, idx, pad_id).items()
                    }
                    last = j == len(micro) - 1  # gradients are all-reduced on the last only
                    with contextlib.nullcontext() if last else acc.no_sync(model):
                        out = model(**batch)
                        loss = out.loss / tc.grad_accum
                        acc.backward(loss)
                    win.add(out.loss, out.logits, batch["labels"], sum(lengths[i] for i in idx))
                if tc.grad_clip > 0:
                    # foreach: one fused norm over all gradients (torch's CPU default is a
                    # Python loop per tensor, ~5% of a MiniLM step); grads are already reduced
                    # across processes here, so the plain torch call is right under DDP too
                    torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip, foreach=True)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                pg.step += 1
                pg.batch_in_epoch += 1
                bar.update(1)
                end_of_epoch = pg.batch_in_epoch == len(steps)
                log_now = pg.step % tc.log_every == 0 or pg.step == total_steps
                eval_now = pg.step % eval_every == 0 or end_of_epoch or pg.step == total_steps
                if log_now or eval_now:
                    if win.bad.item():
                        bar.close()
                        _fail(
                            run_dir,
                            record,
                            pg,
                            f"loss became NaN/inf at step {pg.step}; "
                            f"lower train.lr (now {lr:g}) or enable train.grad_clip",
                        )
                    stats = win.summary()
                    pg.train_time += stats.pop("seconds")
                    pg.examples += win.examples
                    pg.tokens += win.tokens
                    row = {
                        "step": pg.step,
                        "epoch": pg.step / per_epoch,
                        **stats,
                        "lr": scheduler.get_last_lr()[-1],
                        "train_time_s": pg.train_time,
                    }
                    if acc.is_main_process:
                        append_metrics(run_dir, row)
                    acc.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=pg.step)
                    bar.set_postfix(loss=f"{row['train_loss']:.4f}")
                    if eval_now:
                        with mem.paused():
                            stop = validate()
                    win = Window(acc.device)  # the clock restarts after validation
            if pg.batch_in_epoch >= len(steps):
                pg.epoch += 1
                pg.batch_in_epoch = 0
    bar.close()

    # The best validation checkpoint, never the last one, is what gets tested and saved.
    unwrapped = acc.unwrap_model(model)
    load_trainable(unwrapped, best_state)
    t0 = time.perf_counter()
    test = evaluate(model, data.test, tc.eval_batch_size, pad_id, acc.device, n_classes)
    test_time = time.perf_counter() - t0
    model_dir = run_dir / "model"
    if tc.save_model and acc.is_main_process:
        save_model(unwrapped, data.tokenizer, model_dir)
    record.update(
        {
            "status": "ok",
            "stopped_early": stop,
            "steps": pg.step,
            "epochs": pg.step / per_epoch,
            "timing": {
                "train_s": pg.train_time,
                "eval_s": pg.eval_time,
                "test_s": test_time,
                "examples_per_s": pg.examples / max(pg.train_time, 1e-9),
                "tokens_per_s": pg.tokens / max(pg.train_time, 1e-9),
                "train_examples_seen": pg.examples,
                "train_tokens_seen": pg.tokens,
            },
            "memory": {"peak_bytes": mem.used, "process_peak_bytes": mem.peak, "kind": mem.kind},
            "flops": {
                "train_total": flops["total"] * pg.tokens,
                "per_s": flops["total"] * pg.tokens / max(pg.train_time, 1e-9),
            },
            "saved_bytes": weights_bytes(model_dir),
            "curve": pg.curve,
            "best_step": pg.best_step,
            "best_validation": pg.best,
            "test": test,
        }
    )
    if acc.is_main_process:
        write_json(run_dir / RESULT, record)
        (run_dir / STATE).unlink(missing_ok=True)
    if trackers:
        acc.end_training()
    return record


class Window:
    """Training statistics between two logging steps. Loss, hits and the NaN flag stay on the
    device and are read only at logging steps: reading them every step would force a host sync
    and stall the pipeline."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.hits = torch.zeros((), device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.micro = self.examples = self.tokens = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, tokens: int):
        """One micro-batch: its mean loss, predictions and real (non-pad) token count."""
        loss = loss.detach()
        self.loss += loss
        self.bad |= ~torch.isfinite(loss)
        self.hits += (logits.detach().argmax(-1) == labels).sum()
        self.micro += 1
        self.examples += len(labels)
        self.tokens += tokens  # counted on the host from the lengths: no device sync

    def summary(self) -> dict[str, float]:
        """Mean loss and accuracy, throughput and the seconds since the window opened."""
        if self.loss.device.type == "cuda":
            torch.cuda.synchronize()  # the clock must include the queued kernels
        seconds = max(time.perf_counter() - self.start, 1e-9)
        return {
            "train_loss": self.loss.item() / max(1, self.micro),
            "train_accuracy": self.hits.item() / max(1, self.examples),
            "examples_per_s": self.examples / seconds,
            "tokens_per_s": self.tokens / seconds,
            "seconds": seconds,
        }


def save_model(model, tokenizer, folder: Path) -> None:
    """Standard formats: PEFT adapter (+ the base config with labels) or a full HF model."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.save_pretrained(folder)  # id2label + num_labels for loading the adapter back
    tokenizer.save_pretrained(folder)


def _fail(
    run_dir: Path,
    record: dict,
    pg: Progress,
    reason: str,
    error: type[RunFailed] = TrainingDiverged,
) -> None:
    """Record the run as failed (a complete result.json) and stop it."""
    record.update({"status": "failed", "reason": reason, "steps": pg.step, "curve": pg.curve})
    write_json(run_dir / RESULT, record)
    raise error(f"run {run_dir.name} failed: {reason}")


def _save_state(path: Path, model, optimizer, scheduler, pg: Progress, best_state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "trainable": trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "progress": vars(pg),
            "best_state": best_state,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        tmp,
    )
    tmp.replace(path)


def _load_state(path: Path, model, optimizer, scheduler) -> tuple[Progress, dict]:
    """Restore model, optimizer, scheduler and RNG; return the progress and best weights."""
    st = torch.load(path, weights_only=False)
    load_trainable(model, st["trainable"])
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    torch.set_rng_state(st["rng"])
    if st.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda_rng"])
    return Progress(**st["progress"]), st["best_state"]


def _flat(d: dict, prefix: str = "") -> dict:
    """Flatten nested config for tracker hyperparameters (scalars only)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
