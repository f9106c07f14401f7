"""bench/device_check.py, the CUDA path's one command, dry-run on the CPU with tiny models
(``--device cpu --tiny``) so it cannot rot before a GPU is at hand: every method runs or is
refused with its reason on both models (none crashes), QLoRA trains and reloads, fp16 is
refused on a CPU in one line, the plan's peak and the run's are both there, and the Trainer
comparison ran."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))


@pytest.mark.slow
@pytest.mark.extended  # make test in 10 min: make test-extended (CI runs it after make test)
def test_the_device_check_runs_on_the_cpu(tmp_path):
    import device_check

    out = tmp_path / "check.json"
    device_check.main(["--device", "cpu", "--tiny", "--steps", "2", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["machine"]["packages"]["torch"] and r["precision"] == "bf16"
    for model, rows in r["methods"].items():
        failed = {m: o["reason"] for m, o in rows.items() if o["status"] == "failed"}
        assert not failed, (model, failed)
        ran = [o for o in rows.values() if o["status"] == "ok"]
        assert len(ran) >= 10, (model, rows)  # most methods run; the rest say why not
        assert all(o["precision"] == "bf16" and o["reload_same_accuracy"] for o in ran)
    assert r["methods"]["decoder"]["prompt"]["status"] == "ok"  # issue 30's crash
    assert r["qlora"]["status"] == "ok" and "uint8" in r["qlora"]["weights"]
    assert r["fp16"]["status"] == "refused" and "CUDA" in r["fp16"]["reason"]
    for o in r["plan"].values():
        assert o["status"] == "ok" and o["planned_bytes"] > 0 and o["measured_bytes"] > 0, o
    for o in r["trainer"].values():
        assert o["status"] == "ok" and o["trainer_examples_per_s"] > 0, o
