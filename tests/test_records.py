"""The run record is defined once (results.RunRecord): it round-trips, reads the records
written before the schema field, refuses newer schemas, and a corrupt one is skipped by
the report with a warning that names the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.report import build_report
from tunelab.results import (
    SCHEMA,
    Env,
    RunRecord,
    Scores,
    Timing,
    Tuning,
    TuningSummary,
    load_records,
    read_record,
)

V1 = Path(__file__).parent / "data" / "record-v1.json"  # written by tunelab before schema 2


def test_round_trip_keeps_every_field(tmp_path):
    rec = RunRecord.start(tmp_path / "lora-seed3", "lora", load_config(None, ["method=lora"]))
    rec.finish(timing=Timing.of(10.0, 1.0, 0.5, 200, 4000), test=Scores(accuracy=0.75), steps=7)
    rec.write(tmp_path / "lora-seed3")
    back = read_record(tmp_path / "lora-seed3")
    assert back.to_dict() == rec.to_dict()
    on_disk = json.loads((tmp_path / "lora-seed3" / "result.json").read_text())
    assert on_disk["schema"] == SCHEMA and "metrics" not in on_disk and "run_dir" not in on_disk
    assert on_disk["timing"]["examples_per_s"] == 20.0 and back.timing.tokens_per_s == 400.0


def test_every_section_reads_back_typed(tmp_path):
    """What crosses from train to compare / report / plan is typed on the way back too."""
    cfg = load_config(None, ["method=lora", "method.r=4", "tune.storage=postgresql://u:pw@h/db"])
    rec = RunRecord.start(tmp_path / "r", "lora", cfg, env=Env(device="cpu", precision="no"))
    rec.tuning = Tuning(study="lora", trial=3, params={"train.lr": 1e-3})
    rec.finish(best_validation=Scores(loss=0.4, accuracy=0.8, macro_f1=0.79), steps=3)
    rec.write(tmp_path / "r")
    back = read_record(tmp_path / "r")
    assert back.config.method == cfg.method and back.config.method.r == 4
    assert back.config.tune.storage == "postgresql://u:***@h/db"  # redacted on disk
    assert back.env.device == "cpu" and back.is_trial and back.tuning.trial == 3
    assert back.best_validation == Scores(loss=0.4, accuracy=0.8, macro_f1=0.79)
    assert (
        back.test is None
        and "perplexity"
        not in json.loads((tmp_path / "r" / "result.json").read_text())["best_validation"]
    )


def test_a_tuning_summary_reads_back_typed(tmp_path):
    t = TuningSummary(trials_per_method=4, evals=2, metric="loss")
    t.write(tmp_path)
    assert TuningSummary.read(tmp_path) == t and TuningSummary.read(tmp_path / "none") is None
    (tmp_path / "tuning.json").write_text("{not json")
    assert TuningSummary.read(tmp_path) is None  # skipped with a warning, not a crash


def test_schema_1_records_are_read(tmp_path):
    shutil.copytree(V1.parent, tmp_path / "runs" / "lora-seed0", dirs_exist_ok=True)
    (tmp_path / "runs" / "lora-seed0" / "record-v1.json").rename(
        tmp_path / "runs" / "lora-seed0" / "result.json"
    )
    rec = read_record(tmp_path / "runs" / "lora-seed0")
    assert rec.schema == SCHEMA and rec.ok and rec.method == "lora"
    assert rec.params.trainable == 74_498 and rec.data.majority == {}
    assert rec.test.accuracy == pytest.approx(0.7796, abs=1e-3)
    html, md = build_report(tmp_path / "runs")
    assert "lora" in md.read_text()


def test_newer_schema_and_non_records_are_refused(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({**json.loads(V1.read_text()), "schema": 99}))
    with pytest.raises(TunelabError, match="newer than this tunelab"):
        read_record(tmp_path)
    (tmp_path / "result.json").write_text("[1, 2]")
    with pytest.raises(TunelabError, match="not a run record"):
        read_record(tmp_path)


def test_corrupt_record_is_skipped_with_a_warning(tmp_path, capsys):
    good, bad = tmp_path / "a" / "lora-seed0", tmp_path / "a" / "full-seed0"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    shutil.copy(V1, good / "result.json")
    (bad / "result.json").write_text(V1.read_text()[:500])  # cut short by a full disk
    records = load_records(tmp_path / "a")
    assert [r.name for r in records] == ["lora-seed0"]
    err = capsys.readouterr().err
    assert "warning: skipping" in err and str(bad / "result.json") in err
    from tunelab.cli import main

    assert main(["report", str(tmp_path / "a")]) == 0
    assert "full-seed0" in capsys.readouterr().err


def test_a_cpu_run_records_its_cpu_time_and_the_machines_other_load(tiny_model, toy_csv, tmp_path):
    import os

    import torch

    from tests.conftest import tiny_overrides
    from tunelab.config import load_config
    from tunelab.train import run

    rec = run(load_config(None, tiny_overrides(tiny_model, toy_csv, tmp_path)))
    t = rec.timing
    assert t.threads == torch.get_num_threads() and t.cores == os.cpu_count()
    assert 0 < t.cpu_s <= 1.2 * t.threads * t.train_s + 0.1  # no more than its threads allow
    assert 0 <= t.other_cpu_s <= t.cores * t.train_s + 0.5  # no more than the machine has
