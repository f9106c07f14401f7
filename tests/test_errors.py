"""Every bad input: one line naming the problem and the fix, exit code 2, no traceback, and no
half-written result.json."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import tiny_overrides, toy_rows, write_csv

from tunelab.cli import main


@dataclass
class Result:
    returncode: int
    stderr: str


def cli(*args: str) -> Result:
    """The CLI in this process (fast): its exit code and stderr. An exception escaping
    ``main`` fails the test, so 'no traceback' holds too; ``real_cli`` checks it end to end."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(args))
    return Result(rc, err.getvalue())


def real_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunelab", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def assert_one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tunelab: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def files(tmp_path):
    rows = toy_rows(60)
    return {
        "one_class": write_csv(tmp_path / "one.csv", [r for r in rows if r["sentiment"] == "pos"]),
        "no_label": write_csv(tmp_path / "nolabel.csv", [{"review": r["review"]} for r in rows]),
        "empty": _header_only(tmp_path / "empty.csv"),
        "ok": write_csv(tmp_path / "ok.csv", rows),
    }


def _header_only(path: Path) -> Path:
    path.write_text("review,sentiment\n")
    return path


CASES = {
    "unknown method": (["method=lorax"], ["unknown method 'lorax'", "full"]),
    "unknown model": (
        ["model.name=no-such-org/no-such-model"],
        ["cannot load model", "built-in name"],
    ),
    "unknown dataset": (
        ["data.dataset=no-such-dataset-xyz"],
        ["cannot load dataset", "rotten-tomatoes"],
    ),
    "missing text column": (
        ["data.dataset={ok}", "data.text_column=body"],
        ["text column 'body' not found", "review"],
    ),
    "missing label column": (["data.dataset={no_label}"], ["no label column", "--label-column"]),
    "one class": (["data.dataset={one_class}"], ["only one class"]),
    "empty dataset": (["data.dataset={empty}"], ["no labelled training examples"]),
    "not a number": (["train.lr=fast"], ["train.lr must be a number"]),
    "unknown key": (["train.lrr=1"], ["unknown config key 'train.lrr'", "lr"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, files, tiny_model, tmp_path):
    extra, needles = CASES[case]
    extra = [e.format(**{k: str(v) for k, v in files.items()}) for e in extra]
    proc = cli("run", *tiny_overrides(tiny_model, str(files["ok"]), tmp_path / "runs"), *extra)
    assert_one_line_error(proc, *needles)
    assert not list((tmp_path / "runs").rglob("result.json"))


def test_nan_loss_fails_the_run_and_says_so(files, tiny_model, tmp_path):
    proc = cli(
        "run",
        *tiny_overrides(
            tiny_model,
            str(files["ok"]),
            tmp_path,
            **{"train.lr": 1e12, "train.grad_clip": 0, "train.warmup": 0, "train.log_every": 1},
        ),
    )
    assert_one_line_error(proc, "NaN", "train.lr")
    rec = json.loads(next(tmp_path.rglob("result.json")).read_text())
    assert rec["status"] == "failed" and "NaN" in rec["reason"]


def test_existing_run_is_not_overwritten(files, tiny_model, tmp_path):
    args = ["run", *tiny_overrides(tiny_model, str(files["ok"]), tmp_path, **{"train.epochs": 1})]
    assert cli(*args).returncode == 0
    before = (tmp_path / "full-seed0" / "result.json").read_text()
    assert_one_line_error(cli(*args), "already holds a run", "--overwrite")
    assert (tmp_path / "full-seed0" / "result.json").read_text() == before
    assert cli(*args, "--overwrite").returncode == 0


def test_unknown_method_in_compare(tmp_path):
    assert_one_line_error(
        cli("compare", "--methods", "full,lorra", "--out", str(tmp_path)), "lorra", "lora"
    )


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["method=prompt", "method.init=txt"], "method.init must be one of random, text"),
        (["data.max_train_examples=-5"], "data.max_train_examples must be > 0"),
        (["method=lora", "method.rr=16"], "unknown config key 'method.rr'"),
    ],
)
def test_refused_before_anything_is_loaded_or_written(extra, needle, tmp_path):
    # a model that does not exist: the refusal must come before any loading
    proc = real_cli("run", "model.name=/nonexistent", f"out_dir={tmp_path / 'runs'}", *extra)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "runs").exists()


def test_compare_names_the_seeds_flag(tmp_path):
    proc = cli("compare", "--seeds", "0", "--out", str(tmp_path), "model.name=/nonexistent")
    assert_one_line_error(proc, "--seeds must be at least 1")


def test_method_knob_on_the_command_line(files, tiny_model, tmp_path):
    over = tiny_overrides(tiny_model, str(files["ok"]), tmp_path, **{"train.epochs": 1})
    assert cli("run", *over, "method=lora", "method.r=4").returncode == 0
    rec = json.loads((tmp_path / "lora-seed0" / "result.json").read_text())
    assert rec["method_knobs"]["r"] == 4 and rec["params"]["trainable"] == 2 * 2 * (4 * 32 * 2) + 66
