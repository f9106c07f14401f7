"""tune: search spaces refused when wrong, pruning through the loop's on_validation seam,
a study that resumes without redoing trials, two processes on one journal, and the test split
never scored while tuning."""

from __future__ import annotations

import json
import re

import optuna
import pytest
from conftest import as_a_shell_starts, tiny_overrides

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.space import check_spaces
from tunelab.train import Session, run
from tunelab.tuning import Reporter, open_study, storage_for, trial_config, tune


def base_cfg(tiny_model, toy_csv, out, **extra):
    over = {"train.epochs": 2, "train.lr": 2e-3, "tune.eval_examples": 30, **extra}
    return load_config(None, tiny_overrides(tiny_model, toy_csv, out, **over))


@pytest.mark.parametrize(
    "space, message",
    [
        ({"lorax": {"lr": [1e-4, 1e-2]}}, "unknown method 'lorax'"),
        ({"lora": {"rank": [4, 8]}}, "unknown knob 'rank'"),
        ({"lora": {"lr": [1e-2, 1e-4]}}, "the range [0.01, 0.0001] is empty"),
        ({"lora": {"dropout": [0.1, 0.1]}}, "is empty"),
        ({"lora": {"lr": [0, 1e-2]}}, "log-uniform range needs low > 0"),
        ({"lora": {"r": []}}, "empty list"),
        ({"lora": {"r": 0}}, "method.r must be > 0"),
        ({"lora": {"dropout": [0.0, 1.5]}}, "method.dropout must be in [0, 1)"),
        ({"prompt": {"init": ["random", "txt"]}}, "method.init must be one of random, text"),
    ],
)
def test_bad_search_spaces_are_refused(space, message):
    cfg = load_config(None, [f"tune.space={json.dumps(space)}"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_spaces(["lora", "prompt"], cfg.tune)


def test_spaces_are_declared_by_the_methods_and_overridable():
    cfg = load_config(
        None, ["tune.space.lora.lr=[1e-4, 1e-2]", "tune.space.lora.r=8", "tune.shared=[warmup]"]
    )
    spaces = check_spaces(["full", "lora"], cfg.tune)
    assert spaces["full"]["train.lr"] == ("log", 5e-6, 5e-4)  # default/10 .. default*10
    assert spaces["lora"]["train.lr"] == ("log", 1e-4, 1e-2)  # '1e-4' is a number here
    assert spaces["lora"]["method.r"] == ("fixed", 8.0)
    assert spaces["lora"]["method.alpha"][0] == "choice" and "train.warmup" in spaces["full"]
    with pytest.raises(ConfigError, match="tune.shared: unknown knob 'momentum'"):
        check_spaces(["full"], load_config(None, ["tune.shared=[momentum]"]).tune)


def test_a_hopeless_trial_is_pruned_and_recorded(tiny_model, toy_csv, tmp_path):
    base = base_cfg(tiny_model, toy_csv, tmp_path)
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    for v in (0.95, 0.97):  # two earlier trials that did well at every validation
        study.add_trial(
            optuna.trial.create_trial(
                value=v,
                params={},
                distributions={},
                intermediate_values=dict.fromkeys(range(1, 5), v),
            )
        )
    trial = study.ask()
    cfg = trial_config(base, "full", {"train.lr": 1e-9}, trial.number)  # cannot learn
    rec = run(cfg, on_validation=Reporter(trial, "accuracy"), tuning={"study": "full"})
    assert rec.status == "pruned" and len(rec.curve) == 1  # stopped at its first validation
    assert rec.test is None and not (tmp_path / "trials" / "full" / "2" / "model").exists()
    on_disk = json.loads((tmp_path / "trials" / "full" / "2" / "result.json").read_text())
    assert on_disk["status"] == "pruned" and on_disk["tuning"] == {"study": "full"}


@pytest.mark.slow  # ~25 s: make test, not test-fast
def test_tuning_resumes_and_never_scores_the_test_split(tiny_model, toy_csv, tmp_path, monkeypatch):
    scored = []
    original = Session.evaluate

    def spy(self, split, what):
        scored.append("test" if split is self.data.test else "validation")
        return original(self, split, what)

    monkeypatch.setattr(Session, "evaluate", spy)
    base = base_cfg(tiny_model, toy_csv, tmp_path, **{"tune.trials": 2, "tune.pruner": "hyperband"})
    best = tune(base, ["lora"])
    assert best.methods["lora"].trials.complete + best.methods["lora"].trials.pruned == 2
    assert scored and set(scored) == {"validation"}
    trials = tmp_path / "trials" / "lora"
    first = {p.parent.name: p.stat().st_mtime_ns for p in trials.glob("*/result.json")}
    more = base_cfg(tiny_model, toy_csv, tmp_path, **{"tune.trials": 3, "tune.pruner": "hyperband"})
    tune(more, ["lora"])  # the same command with a larger budget: only the third trial runs
    runs = sorted(p.parent.name for p in (tmp_path / "trials" / "lora").glob("*/result.json"))
    assert runs == ["0", "1", "2"]
    for p in (tmp_path / "trials" / "lora").glob("[01]/result.json"):
        assert p.stat().st_mtime_ns == first[p.parent.name], "a finished trial was redone"
    summary = json.loads((tmp_path / "tuning.json").read_text())["methods"]["lora"]
    assert summary["examples"] > 0 and summary["best_params"]["train.lr"] > 0
    from tunelab.report import build_report

    html, md = build_report(tmp_path)  # a tune-only folder: what the trials show, named
    page = html.read_text()
    assert "No recommendation yet: these are tuning trials" in page and "lora trial 2" in page
    assert "lora (trial " in md.read_text() and "No successful runs" not in page
    with pytest.raises(ConfigError, match="another config"):  # a changed setup is not mixed in
        open_study(
            base_cfg(
                tiny_model, toy_csv, tmp_path, **{"train.epochs": 1, "tune.pruner": "hyperband"}
            ),
            "lora",
            storage_for(more),
        )


@pytest.mark.slow
@pytest.mark.extended  # CI runs it after make test (issue 31: make test in 10 min)
def test_two_workers_share_one_journal(tiny_model, toy_csv, tmp_path):
    over = {"tune.trials": 4, "train.epochs": 1, "tune.pruner": "hyperband"}
    tune(base_cfg(tiny_model, toy_csv, tmp_path, **over), ["bitfit"], workers=2)
    base = base_cfg(tiny_model, toy_csv, tmp_path, **over)
    study = optuna.load_study(study_name="bitfit", storage=storage_for(base))
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 4 <= len(done) <= 5  # each worker checks the count before starting a trial
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both processes worked


@pytest.mark.slow
@pytest.mark.extended  # CI runs it after make test (issue 31: make test in 10 min)
def test_compare_tune_reruns_each_best_configuration(tiny_model, toy_csv, tmp_path, capsys):
    from tunelab.cli import main

    args = tiny_overrides(tiny_model, toy_csv, tmp_path, **{"train.epochs": 2})
    rc = main(
        [
            "compare",
            "--tune",
            "3",
            "--methods",
            "full,bitfit",
            "--seeds",
            "1",
            "tune.eval_examples=30",
            "tune.space.full.lr=[1e-3, 1e-2]",
            *args,
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "full trial 2:" in out and "bitfit trial 0:" in out
    summary = json.loads((tmp_path / "tuning.json").read_text())["methods"]
    final = json.loads((tmp_path / "full-seed0" / "result.json").read_text())
    assert final["lr"] == pytest.approx(summary["full"]["best_params"]["train.lr"])
    assert final["tuning"]["trials"] == 3 and final["test"]["accuracy"] > 0
    page = (tmp_path / "report.html").read_text()
    assert "tuned (3 trials each)" in page and 'id="tuning"' in page and 'id="tune-lr"' in page
    # trials are in the tuning section, not in the comparison table
    assert '<tr data-method="full"' in page and page.count('<tr data-method="full"') == 1


@pytest.mark.slow
@pytest.mark.extended  # CI runs it after make test (issue 31: make test in 10 min)
def test_ctrl_c_then_the_same_command_resumes(tiny_model, toy_csv, tmp_path):
    """A real process interrupted by SIGINT mid-trial, then the same command again: the trials
    that finished are kept, the interrupted one is redone, the budget ends exact."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [
        sys.executable,
        "-m",
        "tunelab",
        "tune",
        "--methods",
        "full",
        "--trials",
        "4",
        "tune.eval_examples=30",
        "tune.pruner=none",
        *tiny_overrides(
            tiny_model, toy_csv, tmp_path, **{"train.epochs": 12, "data.max_train_examples": 96}
        ),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # a process started with SIGINT ignored (as other tests in this session may leave it, and
    # as background jobs of a script get it) keeps ignoring Ctrl-C: start it as a shell would
    proc = subprocess.Popen(
        as_a_shell_starts(args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    trials = tmp_path / "trials" / "full"
    deadline = time.time() + 240
    while not (trials / "1" / "result.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    while not (trials / "2" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the tune finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "--resume" in err
    kept = {n: (trials / n / "result.json").stat().st_mtime_ns for n in ("0", "1")}
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    for n, mtime in kept.items():
        assert (trials / n / "result.json").stat().st_mtime_ns == mtime
    study = optuna.load_study(
        study_name="full",
        storage=storage_for(load_config(None, tiny_overrides(tiny_model, toy_csv, tmp_path))),
    )
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1, states
