"""ONE explicit, method- and task-agnostic training loop (on accelerate: CPU, CUDA, DDP, FSDP).

``run`` = ``setup`` (data, model, method, AdamW + schedule) -> ``restore`` (a checkpoint) ->
``train_loop`` (``train_step``; regularly ``validate``, which keeps the best weights, and the
trend's probes) -> ``finish`` (test the best checkpoint, save it, write the record)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed

from tunelab import checkpoint as ckpt
from tunelab import fast, forgetting, guard, measure, quantize, results, rundir, sharding, trend
from tunelab import resume as saving
from tunelab.batches import optimizer_steps
from tunelab.config import RunConfig
from tunelab.errors import RunFailed, TrainingDiverged, TunelabError
from tunelab.loggers import Logger, close_quietly, make_logger
from tunelab.measure import PeakMemory, Window, evaluate, improved
from tunelab.methods import Method, knobs
from tunelab.models import apply_method, compile_model, frozen_dtype, load_model
from tunelab.optim import make_optimizer, make_scheduler, step_budget
from tunelab.planning.trace import refuse_early
from tunelab.precision import accelerator, autocast
from tunelab.results import STATE, Env, RunRecord, Scores, Tuning, validation_row
from tunelab.resume import Progress, Saver
from tunelab.tasks import Prepared, data_info, prepare_data

PAUSE = "pause"
OnValidation = Callable[[int, Scores], bool | str | None]
"""After each validation (its number in the run, counted across a resume; its scores): False
stops the run (``pruned``); PAUSE stops it keeping its checkpoint (``paused``; resume goes on)."""


@dataclass
class Session:
    """What a run holds while it trains, built once by ``setup``."""

    cfg: RunConfig
    run_dir: Path
    acc: object  # accelerate.Accelerator
    data: Prepared
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    record: RunRecord
    per_epoch: int  # optimizer steps per epoch
    total_steps: int
    eval_every: int
    probe_every: int  # steps between probe-subset points of the trend (0: none; tunelab.trend)
    rss_before_model: int
    saver: Saver  # what checkpoints, restores and stops need of it (tunelab.resume)

    def evaluate(self, split, what: str) -> Scores:
        """The task's scores on a split in the run's precision (``what``: for progress)."""
        pad_id, acc = self.data.tokenizer.pad_token_id, self.acc
        model = acc.unwrap_model(self.model)  # DDP: each process scores its own share
        args = (self.cfg.train.eval_batch_size, pad_id, acc.device, acc.mixed_precision, what)
        return evaluate(model, self.data.task, split, *args, per_example=what == "test")


def run(
    cfg: RunConfig,
    overwrite: bool = False,
    resume: bool = False,
    on_validation: OnValidation | None = None,
    tuning: Tuning | None = None,
) -> RunRecord:
    """Train, validate, test and save one run; return its record (also in result.json).
    ``tuning`` tags the record of a tuning trial or of a tuned configuration."""
    run_dir = rundir.run_dir_for(cfg)
    done = results.read_record(run_dir) if resume else None
    if done and done.ok:
        return done
    method = cfg.method  # built and checked with the config, before anything touches disk
    refuse_early(cfg)  # the task, the precision here, the method on this model
    done = rundir.claim_run_dir(run_dir, overwrite, resume, cfg)  # + config.yaml (redacted)
    if done:  # another process finished it between the check above and the claim
        return done
    record = RunRecord.start(run_dir, method.name, cfg, method_knobs=knobs(method))
    record.tuning = tuning
    pg, best, logger = Progress(), {}, None
    resumable = "interrupted; continue it with the same command and --resume"
    with guard.StopSignals() as stop, guard.MemoryGuard():  # Ctrl-C; memory running out
        try:
            s = setup(cfg, method, run_dir, record)
            s.saver.stop = stop
            pg, best = saving.restore(s.saver, resume)
            logger = make_logger(run_dir, s.acc, cfg, s.total_steps, pg)
            outcome = train_loop(s, pg, best, logger, on_validation)
            if outcome == "interrupted":  # checkpoint written: record it, exit 130 / 143
                record.stop("interrupted", resumable, pg.step, pg.curve).write(run_dir)
                raise guard.Interrupted(stop.signum, pg.step)
            return finish(s, pg, best, outcome)
        except RunFailed as e:  # recorded, so a comparison reports it and goes on
            record.fail(str(e), pg.step, pg.curve).write(run_dir)
            raise type(e)(f"run {run_dir.name} failed: {e}") from None
        except KeyboardInterrupt as e:
            if not isinstance(e, guard.Interrupted) and (run_dir / STATE).exists():
                record.stop("interrupted", resumable, pg.step, pg.curve).write(run_dir)
            raise
        except Exception as e:  # anything else: recorded too, its traceback in error.txt
            raise rundir.record_failure(record, run_dir, e, pg.step, pg.curve)  # noqa: B904
        finally:
            close_quietly(logger)
            rundir.release_run_dir(run_dir)


def setup(cfg: RunConfig, method: Method, run_dir: Path, record: RunRecord) -> Session:
    """Data, model, method, optimizer and schedule; fills the record's static fields."""
    tc, trackers = cfg.train, (None if cfg.tracker == "none" else cfg.tracker)
    acc = accelerator(tc, trackers, run_dir)  # device and precision, decided once
    mp, fast_paths = acc.mixed_precision, tc.fast_cpu and acc.device.type == "cpu"
    if fast_paths:
        fast.tune_allocator()
    set_seed(tc.seed)  # before the head, adapters and prompts are initialised
    data = prepare_data(cfg)
    rss_before_model, mc = measure.settled_memory(acc.device), cfg.model
    model = load_model(
        mc.name, data.splits.label_names, data.tokenizer.pad_token_id, data.task.lm_head,
        mc.trust_remote_code, mc.allow_pickle, quantize.quantization(mc, method, mp, acc.device),
        acc.device)  # fmt: skip
    record.data = data_info(data, measure.zero_shot(cfg, data, model, acc.device, mp))
    record.forgetting = forgetting.before(cfg, model, data.tokenizer, acc.device, mp)  # base
    try:
        model = apply_method(method, model, frozen_dtype(mc.base_dtype, mp, method))
    except TunelabError as e:
        raise RunFailed(str(e)) from None
    if tc.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lr = tc.lr if tc.lr is not None else method.lr
    record.fast_cpu = fast.install(model) if fast_paths else {}
    compile_model(model, tc.compile)  # after fast.install: it compiles the fast paths too
    record.lr, record.params = lr, results.Params(**measure.count_params(model))
    record.flops_per_token = results.Flops(**measure.flops_per_token(model))
    weights = ", ".join(sorted({str(p.dtype)[6:] for p in model.parameters()}))  # bf16 base
    record.env = Env(**measure.environment(acc.device), precision=mp, weights=weights)
    model, optimizer = sharding.prepare(acc, tc, model, record.env,  # DDP, FSDP or neither
        lambda m: make_optimizer(method.param_groups(m, lr, tc.weight_decay), lr))  # fmt: skip
    per_epoch, total, eval_every = step_budget(tc, len(data.train), acc.num_processes)
    scheduler = make_scheduler(optimizer, cfg, total)
    probes = trend.probe_every(tc, total, eval_every)
    parts = (acc, data, model, optimizer, scheduler, record, per_epoch, total, eval_every, probes)
    every = (tc.save_every_steps, tc.save_every_minutes)
    saver = Saver(run_dir, acc, model, optimizer, scheduler, total, *every)
    return Session(cfg, run_dir, *parts, rss_before_model, saver)


def train_loop(
    s: Session, pg: Progress, best: dict, logger: Logger, on_validation: OnValidation | None
) -> str:
    """Optimizer steps until the budget is spent, validating regularly. Returns ``done``,
    ``early`` (patience ran out), or ``pruned`` / ``paused`` (``on_validation`` said so)."""
    tc, device = s.cfg.train, s.acc.device
    s.model.train()
    outcome, accuracy = "done", s.data.task.has_accuracy
    with PeakMemory(device, s.rss_before_model) as mem:
        win = Window(device, accuracy)
        while pg.step < s.total_steps and outcome == "done":
            steps = epoch_steps(s, pg.epoch)
            while pg.batch_in_epoch < len(steps) and pg.step < s.total_steps and outcome == "done":
                train_step(s, steps[pg.batch_in_epoch], win, pg.step)
                pg.step += 1
                pg.batch_in_epoch += 1
                guard.fault("step")
                last = pg.step == s.total_steps or pg.batch_in_epoch == len(steps)
                eval_now = pg.step % s.eval_every == 0 or last
                probe = not eval_now and s.probe_every and pg.step % s.probe_every == 0
                if eval_now or probe or pg.step % tc.log_every == 0:
                    log_window(s, pg, win, logger)
                    with mem.paused():  # the peak measures training steps only
                        if eval_now:
                            outcome = validate(s, pg, best, logger, on_validation)
                        elif probe:
                            trend.probe(s, pg, logger)
                    win = Window(device, accuracy)  # the clock restarts after validation
                if outcome == "done" and saving.stop_requested(s.saver) and not last:
                    saving.checkpoint(s.saver, pg, best, win)
                    outcome = "interrupted"
                elif outcome == "done" and saving.checkpoint_due(s.saver, pg):
                    saving.checkpoint(s.saver, pg, best, win)
            if pg.batch_in_epoch >= len(steps):
                pg.epoch, pg.batch_in_epoch = pg.epoch + 1, 0
    s.record.memory = results.Memory(mem.used, mem.peak, mem.kind)
    return outcome


def epoch_steps(s: Session, epoch: int) -> list[list[tuple[list[int], float]]]:
    """This process's optimizer steps of an epoch, each ``grad_accum`` (batch, loss scale)."""
    n, i = s.acc.num_processes, s.acc.process_index
    return optimizer_steps(s.data.train.lengths, s.cfg.train, epoch, n, i)


def train_step(s: Session, micro: list[tuple[list[int], float]], win: Window, step: int) -> None:
    """Optimizer step ``step`` (from 0) over its micro-batches, then the method's hook."""
    tc, task, pad_id = s.cfg.train, s.data.task, s.data.tokenizer.pad_token_id
    for j, (idx, scale) in enumerate(micro):
        batch = task.collate(s.data.train, idx, pad_id)
        batch = {k: v.to(s.acc.device, non_blocking=True) for k, v in batch.items()}
        sync = j == len(micro) - 1
        with contextlib.nullcontext() if sync else s.acc.no_sync(s.model):
            loss, preds = task.forward(s.model, batch)
            s.acc.backward(loss * (scale / tc.grad_accum))
        win.add(loss, preds, task.targets(batch), sum(s.data.train.lengths[i] for i in idx))
    if tc.grad_clip > 0:
        s.acc.unscale_gradients()  # fp16's loss scaling: clip the true gradients (else no-op)
        # foreach: one fused norm over all gradients (torch's CPU default loops per tensor,
        # ~5% of a MiniLM step); grads are already reduced, so this is right under DDP too
        trainable = [p for p in s.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip, foreach=True)
    s.optimizer.step()
    s.scheduler.step()
    s.cfg.method.after_step(s.acc.unwrap_model(s.model), step, s.total_steps)
    s.optimizer.zero_grad(set_to_none=True)


def log_window(s: Session, pg: Progress, win: Window, logger: Logger) -> None:
    """Read the window's statistics (one host sync), fail on NaN/inf, log them."""
    if win.bad.item():
        raise TrainingDiverged(
            f"loss became NaN/inf at step {pg.step}; lower train.lr (now {s.record.lr:g}) "
            f"or enable train.grad_clip"
        )
    stats = win.summary()
    pg.train_time += stats.pop("seconds")
    pg.train_cpu += stats.pop("cpu_seconds")
    pg.train_other_cpu += stats.pop("other_cpu_seconds")
    pg.examples, pg.tokens = pg.examples + win.examples, pg.tokens + win.tokens
    row = {"epoch": pg.step / s.per_epoch, **stats, "lr": s.scheduler.get_last_lr()[-1]}
    logger.log(pg.step, {**row, "train_time_s": pg.train_time})


def validate(
    s: Session, pg: Progress, best: dict, logger: Logger, on_validation: OnValidation | None
) -> str:
    """Score the validation split, keep the best weights, checkpoint; say whether to go on."""
    tc, model = s.cfg.train, s.acc.unwrap_model(s.model)
    t0 = time.perf_counter()
    val = s.evaluate(s.data.validation, "validation")
    pg.eval_time += time.perf_counter() - t0
    if s.probe_every:  # the probe subset's point too (free when it is the whole split)
        trend.probe(s, pg, logger, val)
    point = {"epoch": pg.step / s.per_epoch, "train_time_s": pg.train_time}
    point.update(validation_row(val))
    with autocast(s.acc.mixed_precision, s.acc.device):  # generations: the run's precision
        samples = s.data.task.samples(model, s.data.validation, s.data.tokenizer)
    if samples:  # a few generations (instruction data), kept with the curve
        point["samples"] = samples
    pg.curve.append({"step": pg.step, **point})
    logger.log_validation(pg.step, point)
    if improved(val, pg.best, s.data.task.selection or tc.metric):
        pg.best, pg.best_step, pg.evals_since_best = val, pg.step, 0
        best.clear()
        best.update(ckpt.trainable_state(model))
    else:
        pg.evals_since_best += 1
    saving.checkpoint(s.saver, pg, best)
    said = on_validation(len(pg.curve), val) if on_validation else None
    if said is False or said == PAUSE:
        return "pruned" if said is False else "paused"
    return "early" if tc.stop_patience and pg.evals_since_best >= tc.stop_patience else "done"


def finish(s: Session, pg: Progress, best: dict, outcome: str) -> RunRecord:
    """Test the best validation checkpoint (never the last one), save it, write the record."""
    rec, model, main = s.record, s.acc.unwrap_model(s.model), s.acc.is_main_process
    ckpt.load_trainable(model, best)
    test_s, stopped = 0.0, outcome in ("pruned", "paused")  # neither is tested nor saved
    if not stopped and s.cfg.train.test:
        t0 = time.perf_counter()
        rec.test = s.evaluate(s.data.test, "test")
        test_s = time.perf_counter() - t0
    if not stopped:  # a tuning trial too, when tuned against it (tunelab.tradeoff)
        forgetting.after(rec.forgetting, s.cfg, model, s.data.tokenizer, s.acc)  # after - base
    if not stopped and s.cfg.train.save_model:  # every process: FSDP gathers, main writes
        ckpt.save_model(model, s.data.tokenizer, s.run_dir / "model", write=main)
    seen = torch.tensor([pg.examples, pg.tokens], device=s.acc.device)  # summed: parts differ
    seen = [int(x) for x in (s.acc.reduce(seen, "sum") if s.acc.num_processes > 1 else seen)]
    cpu = measure.cpu_usage(s.acc.device, pg.train_cpu, pg.train_other_cpu)
    rec.finish(stopped_early=outcome == "early", steps=pg.step, epochs=pg.step / s.per_epoch,
               timing=results.Timing.of(pg.train_time, pg.eval_time, test_s, *seen, cpu),
               saved_bytes=measure.weights_bytes(s.run_dir / "model"), curve=pg.curve,
               trend=pg.trend, best_step=pg.best_step, best_validation=pg.best)  # fmt: skip
    if stopped:  # paused: its checkpoint stays for --resume
        rec.stop(outcome, f"{outcome} by its caller at step {pg.step}", pg.step, pg.curve)
    if main:
        rec.write(s.run_dir)
    if main and outcome != "paused":
        (s.run_dir / STATE).unlink(missing_ok=True)
    s.acc.wait_for_everyone()  # several processes: leave together (the trackers' shutdown
    return rec  # tears the process group down, and a peer already gone would hang it)
