"""Tuning across machines against a real PostgreSQL (tests/services.py starts one): two
`tunelab tune` processes with one storage URL and two output folders (two machines without a
shared filesystem) are refused up front, one line saying what to share; with one shared output
folder (two machines on NFS) both work on one bracket: every trial once, the same decisions in
both processes, the same summary from either side, and a worker killed mid-trial has its trial
taken over from its checkpoint. Optuna's own CLI reads the studies from the same URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import tiny_overrides
from tunelab.results import load_records

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # real servers and processes

# 320 toy examples at batch 16: 20 steps an epoch; 3 epochs, 3 validations: rungs 1 and 3
OVER = {"train.epochs": 3, "tune.eval_examples": 30, "tune.trials": 3, "tune.evals": 3}


def start(out: Path, url: str, model: str, data: str, methods: str, fault: str = ""):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "TUNELAB_STORAGE": url}
    if fault:
        env["TUNELAB_FAULT"] = fault
    argv = [sys.executable, "-m", "tunelab", "tune", "--methods", methods, "--no-report"]
    argv += tiny_overrides(model, data, out, **OVER)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip


def finish(proc, timeout: float = 400) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def once_each(out: Path, method: str, url: str) -> list:
    """Every trial of the study has one run folder, trained over each step once; the study's
    states are the records' (complete: ok, pruned: pruned); returns the records."""
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name=method, storage=storage)
    records = {r.tuning.trial: r for r in load_records(out / "trials" / method)}
    assert sorted(records) == [t.number for t in study.trials] == list(range(OVER["tune.trials"]))
    for t in study.trials:
        rec = records[t.number]
        steps = [p["step"] for p in rec.curve]
        assert steps == sorted(set(steps)), f"trial {t.number} trained a step twice: {steps}"
        assert (t.state.name, rec.status) in {("COMPLETE", "ok"), ("PRUNED", "pruned")}, (
            t.state.name, rec.status)  # fmt: skip
    return list(records.values())


def decisions(stdout: str) -> list[str]:
    """A process's race lines at each rung (leader, who still races)."""
    return [x.strip() for x in stdout.splitlines() if ": leader " in x]


def test_two_output_folders_on_one_database_are_refused_up_front(
    postgres, tiny_model, toy_csv, tmp_path
):
    url = postgres.fresh("two_folders")
    a = start(tmp_path / "a", url, tiny_model, toy_csv, "bitfit")
    b = start(tmp_path / "b", url, tiny_model, toy_csv, "bitfit")
    (ra, _, ea), (rb, _, eb) = finish(a), finish(b)
    assert sorted([ra, rb]) == [0, 2], (ea[-1500:], eb[-1500:])
    won, lost = ("a", "b") if ra == 0 else ("b", "a")
    err = eb if rb else ea
    # one line of ours (libraries may print their own notices, e.g. bitsandbytes offline)
    assert [x.startswith("tunelab: error:") for x in err.splitlines()].count(True) == 1
    assert "Traceback" not in err
    assert "tuned into another output folder" in err and "same --out" in err
    assert str((tmp_path / won).resolve()) in err  # it says which folder to share
    assert "secret" not in err and "***" in err  # the storage's password stays out of sight
    assert not (tmp_path / lost / "trials").exists()  # refused before any trial
    once_each(tmp_path / won, "bitfit", url)
    # the loser, started again after the winner finished, is refused the same way
    again = finish(start(tmp_path / lost, url, tiny_model, toy_csv, "bitfit"))
    assert again[0] == 2 and "tuned into another output folder" in again[2]


def test_two_workers_on_one_shared_folder_share_every_decision(
    postgres, tiny_model, toy_csv, tmp_path
):
    """Two machines on NFS: one --out, one database; two methods race after rung 1."""
    url = postgres.fresh("shared")
    out = tmp_path / "shared"
    procs = [start(out, url, tiny_model, toy_csv, "bitfit,full") for _ in range(2)]
    results = [finish(p) for p in procs]
    for rc, _, err in results:
        assert rc == 0, err[-2000:]
    for method in ("bitfit", "full"):
        once_each(out, method, url)
    one, two = (decisions(stdout) for _, stdout, _ in results)
    assert one and one == two  # the same leader and the same racers at every rung, both sides
    first = json.loads((out / "tuning.json").read_text())
    # the summary from either side: a third process (any machine) writes the same one
    rc, _, err = finish(start(out, url, tiny_model, toy_csv, "bitfit,full"))
    assert rc == 0, err[-2000:]
    assert json.loads((out / "tuning.json").read_text()) == first
    # Optuna's own CLI (and optuna-dashboard) read the studies from the same URL
    cli = Path(sys.executable).with_name("optuna")
    listed = subprocess.run([str(cli), "studies", "--storage", url, "-f", "json"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-1000:]
    names = {s["name"] for s in json.loads(listed.stdout)}
    assert {"bitfit", "full"} <= names


def test_a_worker_killed_mid_trial_has_its_trial_taken_over(
    postgres, tiny_model, toy_csv, tmp_path
):
    """One of two workers on a shared folder is SIGKILLed in the middle of a trial (no handler:
    an out-of-memory kill, a lost machine): the other takes the trial over from its last
    checkpoint; nothing is lost or trained twice, and the killed worker started again finds
    the work done."""
    url = postgres.fresh("killed")
    out = tmp_path / "shared"
    live = start(out, url, tiny_model, toy_csv, "bitfit")
    doomed = start(out, url, tiny_model, toy_csv, "bitfit", fault="step:12")
    rd, _, ed = finish(doomed)
    assert rd == -9, ed[-1500:]
    rl, _, el = finish(live)
    assert rl == 0, el[-2000:]
    records = once_each(out, "bitfit", url)
    assert sum(r.ok for r in records) == 1  # the bracket's winner trained to the end
    assert not list((out / "trials").rglob("state.pt"))  # paused checkpoints all closed
    first = json.loads((out / "tuning.json").read_text())
    rc, _, err = finish(start(out, url, tiny_model, toy_csv, "bitfit"))
    assert rc == 0, err[-2000:]
    assert json.loads((out / "tuning.json").read_text()) == first
