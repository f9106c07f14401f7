"""Progress a log file can show: where no progress bar draws (stderr not a terminal), a run
prints a plain line at least every TUNELAB_PROGRESS_SECONDS (30 by default): step / total,
the last loss and throughput, elapsed time and an ETA."""

from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace

import pytest

from tests.conftest import tiny_overrides
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.loggers import Heartbeat, progress_seconds
from tunelab.train import run

LINE = re.compile(r"tunelab: (\S+): step (\d+)/(\d+) \(\d+%\).* elapsed \d+m\d\ds, ETA (\S+)")


def test_a_line_every_interval_while_the_steps_move():
    progress, out = SimpleNamespace(step=0), io.StringIO()
    beat = Heartbeat("lora-seed0", 100, progress, 0.05, out)
    for step in range(1, 11):
        progress.step = step
        beat.log(step, {"train_loss": 0.5, "examples_per_s": 12.0})
        time.sleep(0.03)
    beat.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3, lines  # 0.3 s at one line per 0.05 s
    steps = [int(LINE.match(x).group(2)) for x in lines]
    assert steps == sorted(steps) and steps[-1] > steps[0]
    assert "loss 0.5000" in lines[-1] and "12.0 examples/s" in lines[-1]
    assert LINE.match(lines[-1]).group(4) != "-"  # an ETA once steps have moved
    n = len(lines)
    time.sleep(0.15)
    assert len(out.getvalue().splitlines()) == n  # closed: no more lines


def test_the_interval_is_checked(monkeypatch):
    monkeypatch.setenv("TUNELAB_PROGRESS_SECONDS", "soon")
    with pytest.raises(ConfigError, match="TUNELAB_PROGRESS_SECONDS must be a number"):
        progress_seconds()
    monkeypatch.setenv("TUNELAB_PROGRESS_SECONDS", "")
    assert progress_seconds() == 30.0


def test_a_run_logging_rarely_still_reports(tiny_model, toy_csv, tmp_path, monkeypatch, capsys):
    """log_every larger than the run: no logging point until the end, yet lines come."""
    monkeypatch.setenv("TUNELAB_PROGRESS_SECONDS", "0.2")
    over = tiny_overrides(tiny_model, toy_csv, tmp_path, **{"train.log_every": 1000})
    rec = run(load_config(None, over))
    assert rec.ok
    lines = [x for x in capsys.readouterr().err.splitlines() if LINE.match(x)]
    assert lines and all(LINE.match(x).group(1) == rec.name for x in lines)
    assert {int(LINE.match(x).group(3)) for x in lines} == {rec.steps}
