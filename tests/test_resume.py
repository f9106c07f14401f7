"""An interrupted run resumes from its last validation and ends exactly where an uninterrupted
run with the same seed ends."""

import json

import pytest
from conftest import tiny_overrides

from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.results import load_records
from tunelab.train import run


@pytest.mark.slow  # two full runs: make test, not test-fast
def test_interrupted_run_resumes_to_the_same_result(tiny_model, toy_csv, tmp_path):
    over = {"method.name": "lora", "train.epochs": 3, "train.evals_per_epoch": 2}
    straight = run(load_config(None, tiny_overrides(tiny_model, toy_csv, tmp_path / "a", **over)))

    cfg = load_config(None, tiny_overrides(tiny_model, toy_csv, tmp_path / "b", **over))

    seen = []

    def stop_after_two(step, metrics):
        seen.append(step)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_validation=stop_after_two)
    run_dir = tmp_path / "b" / "lora-seed0"
    rec = json.loads((run_dir / "result.json").read_text())
    assert rec["status"] == "interrupted" and (run_dir / "state.pt").exists()
    assert [r.status for r in load_records(tmp_path / "b")] == ["interrupted"]  # report sees it
    with pytest.raises(TunelabError, match="--resume"):
        run(cfg)
    resumed = run(cfg, resume=True)
    assert resumed.status == "ok" and not (run_dir / "state.pt").exists()
    assert resumed.test == straight.test
    assert [p["val_accuracy"] for p in resumed.curve] == [p["val_accuracy"] for p in straight.curve]
    assert resumed.steps == straight.steps
    steps = [
        r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").open()) if "train_loss" in r
    ]
    assert steps == sorted(set(steps))  # no duplicated log rows after the resume
