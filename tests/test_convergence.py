"""Convergence, read from a run's own curves (report.convergence), and what the report does
with it: a budget-limited comparison is said, the recommendation is withheld or qualified,
and the command that would settle it is printed. Hand-made records with known curves; the
loop's side (probes, until=converged) runs on the tiny model."""

from __future__ import annotations

import io
import math

import pytest

from tests.conftest import tiny_overrides
from tunelab.batches import Encoded
from tunelab.config import load_config
from tunelab.data import default_template
from tunelab.loggers import EvalProgress
from tunelab.report.analysis import summarize_methods
from tunelab.report.convergence import (
    CONVERGED,
    LEARNING,
    OVERFITTING,
    UNKNOWN,
    diagnose,
    lr_area,
)
from tunelab.report.verdicts import recommendation, verdicts
from tunelab.results import DataInfo, Memory, Params, RunRecord, Scores, Timing
from tunelab.train import run

MAJ = {
    "validation": Scores(accuracy=0.5, macro_f1=0.33),
    "test": Scores(accuracy=0.5, macro_f1=0.33),
}
STEPS = [10, 20, 30, 40, 50, 60, 70, 80, 90]


def linear_lr(steps: int, peak: float = 1e-3) -> list[dict]:
    """Metrics rows of a linear-decay schedule (no warmup), logged every 10 steps."""
    return [{"step": s, "lr": peak * (1 - s / steps), "train_loss": 1.0} for s in STEPS]


def rec(method, loss, acc=None, val=0.8, train_s=60.0, stopped=False, until="budget", n=256):
    cfg = load_config(overrides=[f"train.until={until}"])
    r = RunRecord.start(f"/x/{method}-seed0", method, cfg)
    r.data = DataInfo("d", ["a", "b"], 5000, 1000, 1000, majority=MAJ)
    r.params = Params(1000, 10_000, 10.0)
    r.timing = Timing.of(train_s, 1.0, 1.0, 5000, 100_000)
    r.memory = Memory(2**30, 0, "process_rss_above_baseline")
    acc = acc or [None] * len(loss)
    r.trend = [
        {"step": s, "examples": n, "loss": lo, **({"accuracy": a} if a is not None else {})}
        for s, lo, a in zip(STEPS, loss, acc, strict=False)
    ]
    r.metrics = linear_lr(90)
    r.finish(
        steps=90,
        epochs=1.0,
        stopped_early=stopped,
        best_step=50,
        best_validation=Scores(loss=min(loss), accuracy=val),
        test=Scores(accuracy=val, macro_f1=val),
    )
    return r


def test_a_curve_still_falling_at_its_pace_is_still_learning():
    # ln 2 = 0.693 at the start, falling a steady 0.004 per point: far from converged, yet
    # flat-looking at the end because the learning rate decays to zero
    loss = [0.693 - 0.004 * i for i in range(9)]
    d = diagnose(rec("full", loss))
    assert d.state == LEARNING and "pace" in d.why
    # the same curve that stopped falling after a quick drop: converged
    fast = [0.69, 0.45, 0.35, 0.31, 0.30, 0.295, 0.294, 0.294, 0.2935]
    assert diagnose(rec("lora", fast)).state == CONVERGED


def test_accuracy_rising_beyond_its_noise_is_still_learning():
    acc = [0.55, 0.6, 0.63, 0.66, 0.68, 0.70, 0.74, 0.78, 0.82]
    loss = [0.69, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    d = diagnose(rec("full", loss, acc))
    assert d.state == LEARNING and "accuracy still rising" in d.why
    # a rise inside one binomial standard error on 256 examples (~2.5 pt) is noise
    flat = [0.80, 0.81, 0.80, 0.81, 0.80, 0.81, 0.80, 0.81, 0.815]
    assert diagnose(rec("full", [0.5] * 9, flat)).state == CONVERGED


def test_validation_getting_worse_after_its_best_is_overfitting():
    acc = [0.6, 0.75, 0.85, 0.86, 0.86, 0.84, 0.82, 0.80, 0.78]
    assert diagnose(rec("full", [0.5] * 9, acc)).state == OVERFITTING
    rising_loss = [0.6, 0.4, 0.3, 0.29, 0.3, 0.33, 0.36, 0.38, 0.40]
    d = diagnose(rec("full", rising_loss, [0.8] * 9))
    assert d.state == OVERFITTING and "rose" in d.why


def test_too_few_points_and_own_criterion():
    r = rec("full", [0.6, 0.5])
    assert diagnose(r).state == UNKNOWN
    stopped = rec("full", [0.693 - 0.004 * i for i in range(9)], stopped=True, until="converged")
    d = diagnose(stopped)
    assert d.state == CONVERGED and "stopped on its criterion" in d.why


def test_lr_area_interpolates_the_logged_schedule():
    known = {10: 1.0, 20: 0.5, 30: 0.0}
    assert lr_area(known, 10, 20) == pytest.approx(sum(1.0 - 0.05 * i for i in range(1, 11)))
    assert lr_area({}, 3, 7) == 4  # no lr logged: steps


def test_a_budget_limited_comparison_withholds_the_recommendation():
    # prompt learned fast and converged; full was still learning (and already behind)
    prompt = rec("prompt", [0.69, 0.45, 0.35, 0.31, 0.30, 0.295, 0.294, 0.294, 0.2935], val=0.85)
    full = rec("full", [0.693 - 0.004 * i for i in range(9)], val=0.70, train_s=90.0)
    rows = summarize_methods([full, prompt])
    text = recommendation(rows)
    assert text.startswith("No recommendation yet: the comparison is budget-limited")
    assert "full was still learning" in text and "train.until=converged" in text
    assert "Leader in this budget: prompt" in text
    assert any("still learning when its budget ended" in v for v in verdicts(rows))
    # every method converged: the recommendation stands
    full_done = rec("full", [0.69, 0.5, 0.4, 0.35, 0.34, 0.335, 0.334, 0.334, 0.334], val=0.70)
    assert recommendation(summarize_methods([full_done, prompt])).startswith(
        "Recommendation: prompt"
    )
    # only the leader was still learning: the recommendation stands, qualified
    lead = rec("prompt", [0.693 - 0.004 * i for i in range(9)], val=0.85)
    text = recommendation(summarize_methods([full_done, lead]))
    assert text.startswith("Recommendation: prompt") and "only widen its lead" in text


def test_the_default_template_comes_from_the_data():
    t = default_template(("article", "topic"), ["business", "sport", "tech"])
    assert t == "Article: {text}\nTopic (business, sport, tech):"
    assert default_template(("text", "label"), ["no", "yes"]) == "Text: {text}\nAnswer (no, yes):"
    many = [f"class{i}" for i in range(40)]
    assert default_template(("text", "label"), many) == "Text: {text}\nAnswer:"


def test_a_probe_subset_is_the_first_examples_of_every_list():
    enc = Encoded([[1], [2, 2], [3, 3, 3]], None, [0, 1, 0])
    head = enc.head(2)
    assert head.input_ids == [[1], [2, 2]] and head.labels == [0, 1] and head.lengths == [1, 2]
    assert enc.head(10) is enc


def test_evaluation_progress_says_what_how_far_and_when(monkeypatch):
    monkeypatch.setenv("TUNELAB_PROGRESS_SECONDS", "0.05")
    out = io.StringIO()
    with EvalProgress("validation", 100, stream=out) as p:
        p.update(40)
        assert EvalProgress.current is p
        line = p.line()
        import time

        time.sleep(0.2)
    assert EvalProgress.current is None
    assert line.startswith("tunelab: scoring validation: 40/100 examples (40%)") and "ETA" in line
    assert "scoring validation" in out.getvalue()


def test_probes_fill_the_trend_and_until_converged_stops_on_its_own(tiny_model, toy_csv, tmp_path):
    over = tiny_overrides(
        tiny_model, toy_csv, tmp_path, **{"train.epochs": 1, "train.log_every": 50}
    )
    r = run(load_config(overrides=over + ["method=lora", "train.trend_points=6"]))
    assert len(r.curve) == 1 and len(r.trend) >= 6  # one full validation, six probe points
    steps = [p["step"] for p in r.trend]
    assert steps == sorted(steps) and steps[-1] == r.steps
    assert all(p["examples"] == min(256, r.data.validation) for p in r.trend)
    last = r.trend[-1]  # at the full validation the probe is the same subset
    if r.data.validation <= 256:
        assert last["loss"] == pytest.approx(r.curve[-1]["val_loss"])
    # until=converged: a lr far too small never improves after its first validations and
    # stops after `patience` of them, well before its 30-epoch cap
    conv = over + ["method=lora", "train.until=converged", "train.epochs=30", "train.lr=1e-9",
                   "train.patience=2", "name=conv"]  # fmt: skip
    c = run(load_config(overrides=conv))
    assert c.stopped_early and c.epochs < 30
    assert math.isclose(c.epochs, c.steps / (c.steps / c.epochs))
    assert diagnose(c).state == CONVERGED


def test_tuning_trials_run_at_their_budget_and_final_runs_to_convergence():
    from tunelab.tuning import trial_config

    base = load_config(overrides=["train.until=converged", "train.epochs=10"])
    trial = trial_config(base, "lora", {}, 0)
    assert trial.train.until == "budget" and trial.train.stop_patience == 0
    assert base.train.until == "converged" and base.train.stop_patience == 3
