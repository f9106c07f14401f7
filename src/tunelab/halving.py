"""Successive halving across methods: ``tune.pruner=halving``, the default.

Every method gets the same bracket. ``tune.trials`` configurations (a scrambled Sobol sequence
over its search space: even coverage of the space with few points, seeded) train to the first
rung; the best 1/``tune.eta`` of them go on to the next rung *from where they paused* (a paused
trial keeps its resumable checkpoint, so climbing costs only the steps in between); and so on
up to the full step budget. Rungs are validation points: with ``tune.evals`` = 9 and eta = 3,
the 1st, 3rd and 9th validation (1/9, 1/3 and all of the steps). A bracket of 6 costs
6 x 1/9 + 2 x 2/9 + 1 x 6/9 = 1.8 full runs, where a 6-point grid costs 6.

Promotion is by the validation loss at the rung (a proper score that already ranks
configurations when the accuracy still sits at the majority class); the final choice, the
race and the report use the objective (``train.metric``).

After every rung but the last the methods race (``tunelab.race``): a method whose best value
at that rung is behind the leader's outside noise stops there; its paused trials are closed
as pruned, and the study, tuning.json and the report say where and why. The methods still
racing keep equal brackets.

Every decision is made from the trials' run records on disk (the value at the rung's
validation), so every worker process makes the same ones and a tune killed in the middle of a
rung goes on where it was when the same command runs again.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from tunelab.config import RunConfig, TuneConfig
from tunelab.errors import RunFailed
from tunelab.race import Standing, out_of_race
from tunelab.results import STATE, RunRecord, Scores, Tuning, read_record, validation_of
from tunelab.rundir import RunClaimed, claim, release_run_dir, run_dir_for
from tunelab.space import suggest
from tunelab.train import PAUSE, run


def rungs(tc: TuneConfig) -> list[int]:
    """The validations where trials are compared: evals, evals/eta, ... down to 1 (rounded
    up), smallest first."""
    out = [tc.evals]
    while out[0] > 1:
        out.insert(0, math.ceil(out[0] / tc.eta))
    return out


@dataclass
class Trial:
    """One configuration of a method's bracket and its run record (None: not started)."""

    method: str
    number: int
    params: dict
    cfg: RunConfig
    record: RunRecord | None

    def value_at(self, evals: int, metric: str) -> float | None:
        """Its value at its ``evals``-th validation (its last one if the run ended before:
        fewer steps than validations asked); None if it has not got there or failed."""
        rec = self.record
        if rec is None or rec.status == "failed":
            return None
        if len(rec.curve) >= evals:
            return Scores(**validation_of(rec.curve[evals - 1])).value(metric)
        if rec.ok and rec.curve:
            return Scores(**validation_of(rec.curve[-1])).value(metric)
        return None

    def reached(self, evals: int) -> bool:
        rec = self.record
        return rec is not None and (rec.status == "failed" or reached(rec, evals))


def reached(rec: RunRecord, evals: int) -> bool:
    """Whether a trial's run got to its ``evals``-th validation (or ended before: fewer steps
    than validations asked)."""
    return rec.ok or len(rec.curve) >= evals


class PauseAt:
    """``on_validation`` of a climbing trial: pause at its ``evals``-th validation (the last
    rung runs to the end)."""

    def __init__(self, evals: int, of: int):
        self.evals, self.last = evals, evals >= of  # the last rung: validation ``of`` of ``of``

    def __call__(self, evals: int, scores: Scores) -> str | None:
        return PAUSE if evals >= self.evals and not self.last else None


def populate(study, space: dict[str, tuple], n: int, seed: int) -> None:
    """Ask the bracket's ``n`` configurations once (a resumed tune or a second worker finds
    them); each keeps its full parameters (fixed knobs included) as a user attribute."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.QMCSampler(
            scramble=True, seed=seed, warn_independent_sampling=False
        )
    while len(study.trials) < n:
        trial = study.ask()
        trial.set_user_attr("params", suggest(trial, space))


def bracket(base: RunConfig, method: str, study, trial_config: Callable) -> list[Trial]:
    """The method's configurations with their records as they are on disk now."""
    out = []
    for t in study.trials:
        params = t.user_attrs.get("params", t.params)
        cfg = trial_config(base, method, params, t.number)
        out.append(Trial(method, t.number, params, cfg, read_record(run_dir_for(cfg))))
    return out


def climbers(trials: list[Trial], at: list[int], k: int, metric: str, maximize: bool):
    """The trials that train to rung ``k``: all at rung 0, then the best 1/eta of those at the
    rung before by ``metric`` (ties: the lower trial number), failed ones never. ``halve``
    promotes by the validation loss: early in training the accuracy on a few hundred examples
    sits at the majority class in 0.2-point steps (a tie or noise), the loss already ranks."""
    alive = trials
    for j in range(k):
        keep = max(1, len(alive) // _eta(at, j))
        scored = [(t.value_at(at[j], metric), t) for t in alive]
        scored = [(v if maximize else -v, t) for v, t in scored if v is not None]
        scored.sort(key=lambda x: (-x[0], x[1].number))
        alive = [t for _, t in scored[:keep]]
    return alive


def _eta(at: list[int], j: int) -> int:
    """The reduction between rung j and the next: the ratio of their validation counts."""
    return max(1, round(at[j + 1] / at[j]))


def climb(trial: Trial, evals: int) -> bool:
    """Train one trial up to its ``evals``-th validation (to the end on the last rung), going
    on from its pause. False if another live process is running it. The folder is held while
    its record is read again: a worker that finished it a moment ago is never followed by a
    second climb past the rung."""
    folder = run_dir_for(trial.cfg)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        claim(folder)
    except RunClaimed:
        return False  # another worker has it; wait for its record
    try:
        trial.record = read_record(folder)
        if trial.reached(evals):
            return True
        tag = Tuning(study=trial.method, trial=trial.number, params=trial.params)
        pause = PauseAt(evals, trial.cfg.tune.evals)
        trial.record = run(trial.cfg, resume=True, on_validation=pause, tuning=tag)
    except RunFailed:  # recorded on disk as failed: it counts, and never climbs
        trial.record = read_record(folder)
    finally:
        release_run_dir(folder)
    return True


def close(study, trial: Trial, why: str, metric: str, maximize: bool) -> None:
    """End a trial in its study (and on disk) for good: complete at the end of the bracket,
    pruned when it is not promoted or its method stops racing, failed when its run failed.
    Idempotent: every worker may call it."""
    from optuna.trial import TrialState

    rec, folder = trial.record, run_dir_for(trial.cfg)
    if rec is not None and rec.status == "paused":
        rec.stop("pruned", why, rec.steps, rec.curve).write(folder)
        (folder / STATE).unlink(missing_ok=True)
    try:
        if rec is not None and rec.ok and rec.best_validation is not None:
            study.tell(trial.number, rec.best_validation.value(metric))
        elif rec is None or rec.status == "failed":  # the reason: its record and error.txt
            study.tell(trial.number, state=TrialState.FAIL)
        else:
            study.tell(trial.number, state=TrialState.PRUNED)
    except (RuntimeError, ValueError):
        pass  # already told (another worker, or an earlier pass of a resumed tune)


def wait(trials: list[Trial], evals: int, seconds: float = 2.0) -> None:
    """Until every trial of the rung has got there (others ran them), re-reading records; a
    trial whose process died is taken over by ``climb`` on the next pass."""
    while not all(t.reached(evals) for t in trials):
        time.sleep(seconds)
        for t in trials:
            t.record = read_record(run_dir_for(t.cfg))
            if not t.reached(evals):
                climb(t, evals)


def standings(brackets: dict[str, list[Trial]], alive: dict, evals: int, metric: str, k: int):
    """Each racing method's best value at rung ``k`` (validation ``evals``), for the race."""
    sign = -1 if metric == "loss" else 1
    out = []
    for method, trials in brackets.items():
        values = [(t.value_at(evals, metric), t) for t in alive[method]]
        values = [(v, t) for v, t in values if v is not None]
        if values:
            v, t = max(values, key=lambda x: sign * x[0])
            n = t.record.data.validation if t.record else 0
            at = f"at rung {k + 1} (validation {evals} of {t.cfg.tune.evals})"
            out.append(Standing(method, v, n, len(trials), at=at))
    return out


def line(trial: Trial, evals: int, metric: str) -> str:
    """One console line for a trial at a rung."""
    v = trial.value_at(evals, metric)
    params = ", ".join(f"{k.split('.')[-1]}={_short(x)}" for k, x in trial.params.items())
    state = trial.record.status if trial.record else "not run"
    val = f"{v:.4f}" if v is not None else "-"
    where = f"validation {len(trial.record.curve) if trial.record else 0}"
    return f"  {trial.method} trial {trial.number}: {params} -> val {val} at {where} [{state}]"


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def halve(
    base: RunConfig,
    studies: dict,
    spaces: dict,
    trial_config: Callable,
    objective: tuple[str, str],
    say: Callable[[str], None],
    after_rung: Callable[[], None] = lambda: None,
) -> None:
    """Run every method's bracket, rung by rung, racing the methods between rungs.
    ``objective``: the metric trials optimise and its direction (tune.objective_metric)."""
    metric, maximize, at = objective[0], objective[1] == "maximize", rungs(base.tune)
    spent: dict[str, int] = {}  # training examples per method, kept once a method stops
    for method, study in studies.items():
        populate(study, spaces[method], base.tune.trials, base.tune.seed)
    for k, evals in enumerate(at):
        last = k == len(at) - 1
        racing = [m for m in studies if not studies[m].user_attrs.get("stopped")]
        brackets = {m: bracket(base, m, studies[m], trial_config) for m in racing}
        alive = {m: climbers(brackets[m], at, k, "loss", False) for m in racing}
        for m in racing:  # trials left behind at the rung before: pruned for good
            for t in brackets[m]:
                if t not in alive[m]:
                    close(studies[m], t, f"not promoted past rung {k}", metric, maximize)
        for m in racing:
            for t in alive[m]:
                if climb(t, evals):
                    say(line(t, evals, metric))
        wait([t for m in racing for t in alive[m]], evals)
        if last:
            for m in racing:
                for t in brackets[m]:
                    close(studies[m], t, "end of the bracket", metric, maximize)
        else:
            board = standings(brackets, alive, evals, metric, k)
            for m in racing:
                spent[m] = sum(t.record.timing.train_examples_seen for t in brackets[m] if t.record)
            total = f"{sum(spent.values()):,} training examples so far"
            still = race(base, studies, board, maximize, say, total)
            for m in set(racing) - set(still):
                for t in brackets[m]:
                    close(studies[m], t, studies[m].user_attrs["stopped"], metric, maximize)
        after_rung()


def race(
    base: RunConfig, studies: dict, board: list[Standing], maximize: bool, say, spent: str
) -> list[str]:
    """Stop the methods behind the leader outside noise (marked on their studies); one
    console line: the leader, who still races, the compute spent."""
    if base.tune.race and maximize:  # a loss has no binomial interval to race on
        for method, why in out_of_race(board, after=0).items():
            studies[method].set_user_attr("stopped", why)
            say(f"  {method}: {why}")
    still = [m for m in studies if not studies[m].user_attrs.get("stopped")]
    if board:
        lead = max(board, key=lambda s: s.best if maximize else -s.best)
        racing = ", ".join(still)
        say(f"  {lead.at}: leader {lead.method} {lead.best:.4f}; racing {racing}; {spent}")
    return still
