"""Hyperparameter search: one Optuna study per method, the same trial budget and the same
per-trial step budget for every method, so a tuned comparison is a fair one.

Every trial is a normal run (``OUT/trials/<method>/<n>``) that validates ``tune.evals`` times on
a fixed validation subset and never scores the test split; the pruner (Hyperband by default)
stops weak trials through ``train.run``'s ``on_validation`` seam. Studies live in an Optuna
journal file (``OUT/tune.journal``) unless ``tune.storage`` names an RDB URL: running the same
command again resumes, and several processes (``--workers``) share the studies.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab import halving, tradeoff
from tunelab.config import RunConfig, TuneConfig, for_method, redact, to_dict
from tunelab.errors import ConfigError, RunFailed, TunelabError
from tunelab.files import alive, write_text
from tunelab.guard import fault
from tunelab.planning.trace import refuse_early_all
from tunelab.race import Standing, out_of_race
from tunelab.results import (
    MethodTuning,
    RunRecord,
    Scores,
    TrialCounts,
    Tuning,
    TuningSummary,
    load_records,
)
from tunelab.space import check_spaces, suggest
from tunelab.studies import bind, storage_for, storage_name, unbind
from tunelab.tasks import task_class
from tunelab.train import run


def trial_config(base: RunConfig, method: str, params: dict, number: int) -> RunConfig:
    """A trial's run: OUT/trials/<method>/<n>, ``tune.evals`` validations on the fixed
    validation subset, no test score, no saved model; always at the configured budget (the
    pruner decides at fixed rungs: train.until=converged applies to the final runs only)."""
    tc = base.tune
    out = Path(base.out_dir) / "trials" / method
    cfg = for_method(base, method, params, name=str(number), out_dir=str(out))
    cfg.train.test = cfg.train.save_model = False
    cfg.train.until = "budget"
    cfg.forgetting.enabled = tradeoff.on(base)  # measured at a trial's end only when tuned on
    if tc.eval_examples:
        cfg.data.max_eval_examples = min(cfg.data.max_eval_examples or math.inf, tc.eval_examples)
    if cfg.train.max_steps:
        cfg.train.eval_every = math.ceil(cfg.train.max_steps / tc.evals)
    else:
        cfg.train.eval_every = 0
        cfg.train.evals_per_epoch = max(1, math.ceil(tc.evals / cfg.train.epochs))
    return cfg


# ---------------------------------------------------------------- studies


class Reporter:
    """``on_validation`` for a trial: report each validation to Optuna, stop when pruned."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def __call__(self, evals: int, scores: Scores) -> bool:
        self.trial.report(scores.value(self.metric), evals)
        return not self.trial.should_prune()


def objective(base: RunConfig, method: str, space: dict[str, tuple]) -> Callable:
    import optuna

    metric, limit = objective_metric(base)[0], base.forgetting.limit
    one = not base.forgetting.objective  # Optuna's pruners hear one objective only

    def run_trial(trial) -> float | list[float]:
        params = suggest(trial, space)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        cfg = trial_config(base, method, params, trial.number)
        tag = Tuning(study=method, trial=trial.number, params=params)
        report = Reporter(trial, metric) if one else None
        try:
            rec = run(cfg, overwrite=True, on_validation=report, tuning=tag)
        except RunFailed as e:  # a failed trial counts (an interrupted one does not)
            trial.set_user_attr("failed", str(e))
            raise
        trial.set_user_attr("n_val", rec.data.validation)  # what the race's intervals need
        if rec.status == "pruned":
            raise optuna.TrialPruned()
        if limit is not None and tradeoff.forgetting_of(rec) is not None:  # TPE samples
            trial.set_constraint("forgetting", tradeoff.forgetting_of(rec) - limit)  # within
        return tradeoff.told(rec, base, metric)

    return run_trial


def objective_metric(base: RunConfig) -> tuple[str, str]:
    """What trials optimise: train.metric (maximised), or the validation loss (minimised) for
    instruction data or train.metric=loss."""
    metric = task_class(base).selection or base.train.metric
    return metric, "minimize" if metric == "loss" else "maximize"


def open_study(base: RunConfig, method: str, storage, worker: int = 0):
    import optuna

    tc = base.tune
    pruner = {
        "hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=tc.evals),
        "median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "none": optuna.pruners.NopPruner(),
        "halving": optuna.pruners.NopPruner(),  # halving.halve decides, between rungs
    }[tc.pruner]
    study = optuna.create_study(
        storage=storage,
        study_name=method,
        directions=tradeoff.directions(base, objective_metric(base)[1]),
        pruner=pruner,
        load_if_exists=True,
    )
    # seeded, but never the same stream twice: a resumed study or a second worker would
    # otherwise propose the very configurations already tried
    seed = tc.seed + 1000 * worker + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(tc))
    same_setup(study, base)
    fail_dead_trials(study)
    return study


def startup_trials(tc: TuneConfig) -> int:
    """Random start-up trials of each method's sampler; nobody is raced out before them."""
    return max(4, tc.trials // 3)


def fingerprint(base: RunConfig) -> str:
    """The config a study belongs to (all but the storage, racing, the forgetting limit (it
    chooses among trials) and, for the Optuna pruners, the trial count: a successive-halving
    bracket is defined by its size)."""
    d = to_dict(base)
    free = ("storage", "race") + (("trials",) if base.tune.pruner != "halving" else ())
    d["tune"] = {k: v for k, v in d["tune"].items() if k not in free}
    d.pop("name")
    d.pop("out_dir")  # one folder may sit at other paths on other machines (studies.bind)
    d["forgetting"].pop("limit")
    return json.dumps(d, sort_keys=True, default=str)


def same_setup(study, base: RunConfig) -> None:
    """Refuse to mix trials of different setups in one study."""
    fp = fingerprint(base)
    old = study.user_attrs.get("config")
    if old is None:
        study.set_user_attr("config", fp)
    elif old != fp:
        raise ConfigError(
            f"the study {study.study_name!r} in {redact(storage_name(base))} was run with "
            f"another config; pass --overwrite to start it again or pick another --out"
        )


def reset(base: RunConfig, methods: list[str]) -> None:
    """Forget earlier studies of these methods and their trial folders (--overwrite)."""
    import shutil

    import optuna

    storage = storage_for(base)
    for method in methods:
        try:
            optuna.delete_study(study_name=method, storage=storage)
        except KeyError:
            pass
        unbind(base, storage, method)
        shutil.rmtree(Path(base.out_dir) / "trials" / method, ignore_errors=True)


def fail_dead_trials(study) -> None:
    """Trials left RUNNING by a process of this machine that no longer exists (killed): mark
    them failed, so the study counts them and moves on."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get("worker", "")
        if who.startswith(f"{host}:") and not alive(f"{who.split(':')[1]}@{host}"):
            study.tell(t.number, state=TrialState.FAIL)


def finished(study) -> int:
    """Trials that count towards the budget: complete, pruned, or failed for a reason of their
    own (a trial cut by Ctrl-C or a kill is redone)."""
    return sum(
        t.state.name in ("COMPLETE", "PRUNED") or "failed" in t.user_attrs
        for t in study.get_trials(deepcopy=False)
    )


def optimize(base: RunConfig, methods: list[str], worker: int = 0) -> None:
    """Work on each method's study until it holds ``tune.trials`` finished trials (several
    processes may do this at once on one storage)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trial lines are ours (TrialProgress)
    spaces = check_spaces(methods, base.tune)
    storage = storage_for(base)
    studies = {m: open_study(base, m, storage, worker) for m in methods}
    if base.tune.pruner == "halving":
        from tqdm.auto import tqdm

        def summary() -> None:  # after each rung: what `tunelab report` shows meanwhile
            if worker == 0:
                summarize(base, methods)

        spec = (trial_config, objective_metric(base))
        halving.halve(base, studies, spaces, *spec, tqdm.write, summary)
        return
    total = len(methods) * base.tune.trials
    on_trial = TrialProgress(total, sum(map(finished, studies.values())))
    runs = {m: objective(base, m, spaces[m]) for m in methods}
    racing = [m for m in methods if not studies[m].user_attrs.get("stopped")]
    while racing:  # round-robin, one trial at a time: other workers add theirs
        for method in list(racing):
            study = studies[method]
            fail_dead_trials(study)  # a worker of this machine killed mid-trial: run again
            if finished(study) >= base.tune.trials:
                racing.remove(method)
                continue
            study.optimize(runs[method], n_trials=1, catch=(RunFailed,), callbacks=[on_trial])
        racing = race(base, studies, racing, on_trial.write)
    on_trial.bar.close()


def race(base: RunConfig, studies: dict, racing: list[str], say) -> list[str]:
    """The methods still racing after a round (``tunelab.race``); a stopped one is marked
    on its study, so every worker and a resumed tune see it."""
    racing = [m for m in racing if not studies[m].user_attrs.get("stopped")]
    if not base.tune.race or objective_metric(base)[1] != "maximize" or tradeoff.on(base):
        return racing  # a loss has no interval to race on; forgetting is not raced on
    standings = []
    for m in racing:
        done = [t for t in studies[m].trials if t.state.name == "COMPLETE"]
        if done:
            best = max(done, key=lambda t: t.value)
            n = int(best.user_attrs.get("n_val", 0))
            standings.append(Standing(m, best.value, n, finished(studies[m])))
    for method, why in out_of_race(standings, startup_trials(base.tune)).items():
        studies[method].set_user_attr("stopped", why)
        say(f"  {method}: {why}")
    still = [m for m in racing if not studies[m].user_attrs.get("stopped")]
    if standings:  # one line per round: who leads, who still races
        lead = max(standings, key=lambda s: s.best)
        say(f"  round: leader {lead.method} {lead.best:.4f}; racing {', '.join(still) or '-'}")
    return still


def _worker(base: RunConfig, methods: list[str], worker: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        if worker:
            fault("worker")  # the tests: a worker process that dies
        optimize(base, methods, worker)
    except BaseException as e:  # what the parent reports if this process dies
        write_text(worker_log(base, worker), f"{type(e).__name__}: {e}\n")
        raise


def worker_log(base: RunConfig, worker: int) -> Path:
    return Path(base.out_dir) / f".tune-worker-{worker}.error"


def check_workers(base: RunConfig, procs) -> None:
    """Fail the command if a worker process died (its exit code and its last words)."""
    dead = [(i, p.exitcode) for i, p in enumerate(procs, 1) if p.exitcode != 0]
    if dead:
        i, code = dead[0]
        log = worker_log(base, i)
        last = log.read_text().strip().splitlines()[-1] if log.exists() else "no message"
        raise TunelabError(
            f"{len(dead)} tune worker process(es) died; worker {i} exited with code {code}: "
            f"{last}; the trials it finished are kept: run the same command to go on"
        )


def tune(base: RunConfig, methods: list[str], workers: int = 1) -> TuningSummary:
    """Tune every method (``workers`` processes on this machine), write OUT/tuning.json, and
    return each method's best parameters and value."""
    import multiprocessing

    spaces = check_spaces(methods, base.tune)  # refuse a bad space before any process starts
    refuse_early_all(base, methods)  # and a method this model cannot take
    tradeoff.check(base, task_class(base).lm_head)  # and tuning against forgetting, if asked
    storage = storage_for(base)
    bind(base, storage, methods)  # a shared storage: one output folder per study, or refused
    if base.tune.pruner == "halving":  # each bracket asked once, before any worker starts;
        # a lock in the shared folder: two commands started together would both ask
        from filelock import FileLock

        with FileLock(str(Path(base.out_dir) / ".bracket.lock")):
            for m in methods:
                study = open_study(base, m, storage)
                halving.populate(study, spaces[m], base.tune.trials, base.tune.seed)
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(base, methods, i, threads)) for i in range(1, workers)
    ]
    for i, p in enumerate(procs, 1):
        worker_log(base, i).unlink(missing_ok=True)  # an earlier tune's
        p.start()
    try:
        if workers > 1:
            _worker(base, methods, 0, threads)
        else:
            optimize(base, methods)
    finally:
        for p in procs:
            p.join()
    check_workers(base, procs)
    return summarize(base, methods)


class TrialProgress:
    """One line per finished trial (method, number, parameters, validation accuracy, state,
    seconds) and, on a terminal, an overall progress bar."""

    def __init__(self, total: int, done: int):
        from tqdm.auto import tqdm

        self.write = tqdm.write
        self.bar = tqdm(
            total=total,
            initial=done,
            desc="trials",
            unit="trial",
            disable=not sys.stderr.isatty(),
        )

    def __call__(self, study, trial) -> None:
        self.bar.update(1)
        self.write(trial_line(study.study_name, trial))


def trial_line(method: str, trial) -> str:
    vals = trial.values or []  # two: validation and forgetting (tuned against it)
    value = " ".join([f"{vals[0]:.4f}"] + [f"forgetting {f:+.4f}" for f in vals[1:]]) or "-"
    last = max(trial.intermediate_values.values(), default=None)
    if not vals and last is not None:
        value = f"{last:.4f} (last validation)"
    params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in trial.params.items())
    secs = trial.duration.total_seconds() if trial.duration else 0.0
    state = trial.state.name.lower()
    return f"  {method} trial {trial.number}: {params} -> val {value} [{state}, {secs:.0f}s]"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- summary on disk


def summarize(base: RunConfig, methods: list[str]) -> TuningSummary:
    """Per method: search space, trial counts, best parameters and value, compute spent,
    hyperparameter importances (Optuna's). Written to OUT/tuning.json for the report."""
    import optuna

    storage = storage_for(base)
    spaces = check_spaces(methods, base.tune)
    trials = [r for r in load_records(Path(base.out_dir) / "trials") if r.is_trial]
    at = halving.rungs(base.tune) if base.tune.pruner == "halving" else []
    out = TuningSummary(
        trials_per_method=base.tune.trials,
        evals=base.tune.evals,
        eval_examples=base.tune.eval_examples,
        pruner=base.tune.pruner,
        metric=objective_metric(base)[0],
        rungs=at,
        eta=base.tune.eta if at else 0,
        forgetting=tradeoff.setting(base),
        forgetting_limit=base.forgetting.limit,
    )
    for method in methods:
        study = optuna.load_study(study_name=method, storage=storage)
        mine = [r for r in trials if r.tuning.study == method]
        out.methods[method] = summary_of(study, spaces[method], mine, out.metric, base)
        out.methods[method].rungs = [sum(halving.reached(r, e) for r in mine) for e in at]
    out.write(Path(base.out_dir))
    return out


def summary_of(
    study, space: dict[str, tuple], records: list[RunRecord], metric: str = "accuracy",
    base: RunConfig | None = None,
) -> MethodTuning:  # fmt: skip
    """A study's summary. Its best trial is the best complete one (tuned against forgetting:
    the best within forgetting.limit, and the Pareto front, from the trials' records); a
    method with none (the race stopped it, or every trial was pruned) gets its best trial so
    far, by the best validation each trial reached, so that `compare --tune` runs that
    configuration and not the method's defaults."""
    import optuna

    maximize, against = metric != "loss", base is not None and tradeoff.on(base)
    states = [t.state.name for t in study.trials]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    params, value, number, front = {}, None, None, []
    if against:
        front = tradeoff.front(records, metric, maximize)
        top, _ = tradeoff.best(records, metric, maximize, base.forgetting.limit)
        if top is not None:
            params, value = top.tuning.params, top.best_validation.value(metric)
            number = top.tuning.trial
    elif complete:
        best = study.best_trial  # in the study's own direction
        params, value, number = best.params, best.value, best.number
    scored = [r for r in records if r.best_validation is not None]
    scored = [r for r in scored if not math.isnan(r.best_validation.value(metric))]
    if number is None and scored:
        top = max(scored, key=lambda r: (1 if maximize else -1) * r.best_validation.value(metric))
        params, value = top.tuning.params, top.best_validation.value(metric)
        number = top.tuning.trial
    importances = {}
    try:  # from three complete trials on (fewer: Optuna says "equal", which means nothing)
        if len(complete) >= 3:
            up = study.directions[0].name == "MAXIMIZE"  # PED-ANOVA: a target goes down
            first = (lambda t: -t.values[0] if up else t.values[0]) if against else None
            importances = dict(optuna.importance.get_param_importances(study, target=first))
    except (RuntimeError, ValueError):  # nothing varied
        pass
    return MethodTuning(
        space={k: list(v) for k, v in space.items()},
        trials=TrialCounts(*(states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL"))),
        best_params={**{k: v[1] for k, v in space.items() if v[0] == "fixed"}, **params},
        best_value=value,
        best_trial=number,
        examples=sum(r.timing.train_examples_seen for r in records),
        seconds=sum(r.timing.train_s + r.timing.eval_s for r in records),
        importances=importances,
        stopped=study.user_attrs.get("stopped", ""),
        front=front,
    )
