"""Safe by default (issue 18): runs stay inside --out, secrets never reach disk, predict and
export load through the run's safe loader, every failure is recorded and a comparison goes on,
a machine running out of memory stops a run before the kernel kills it, exports are atomic,
messages say how to keep work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from tests.test_corpus import cli
from tunelab.cli import main

# its expensive fixture is built once: the module stays on one xdist worker
pytestmark = pytest.mark.xdist_group("safety")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def tunelab(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab", *args],
        capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=300,
    )  # fmt: skip


def quick(model: str, data: str, out: Path, **extra) -> list[str]:
    return tiny_overrides(model, data, out, **{"train.epochs": 1, **extra})


# ---------------------------------------------------------------- run names


@pytest.mark.parametrize("name", ["../escaped", "/tmp/tunelab-escaped", "a/b", "..", ".hidden"])
def test_run_names_cannot_leave_the_output_folder(name, tiny_model, toy_csv, tmp_path):
    out, beside = tmp_path / "runs", tmp_path / "escaped"
    beside.mkdir()
    planted = {beside / "result.json": "{}", beside / ".keep.tmp": "x", beside / "notes": "mine"}
    for path, text in planted.items():
        path.write_text(text)
    for flag in ([], ["--overwrite"]):
        rc, err = cli("run", *quick(tiny_model, toy_csv, out), f"name={name}", *flag)
        assert rc == 2 and "name must be a plain folder name" in err and "Traceback" not in err
    assert all(p.read_text() == t for p, t in planted.items())  # untouched, not emptied
    assert not out.exists() and not Path("/tmp/tunelab-escaped").exists()


# ---------------------------------------------------------------- secrets


@pytest.mark.slow
@pytest.mark.extended  # CI runs it after make test (issue 31: make test in 10 min)
def test_a_storage_password_never_reaches_disk(tiny_model, toy_csv, tmp_path):
    secret = "hunter2-s3cret"
    url = f"sqlite:///{tmp_path}/studies.db?password={secret}"
    args = quick(tiny_model, toy_csv, tmp_path / "runs", **{"tune.eval_examples": 30})
    rc = main(["compare", "--tune", "2", "--methods", "bitfit", f"tune.storage={url}", *args])
    assert rc == 0
    runs = tmp_path / "runs"
    assert (runs / "tuning.json").exists() and (runs / "report.html").exists()
    leaks = [p for p in runs.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []
    config = (runs / "bitfit-seed0" / "config.yaml").read_text()
    assert "password=***" in config  # redacted, not dropped: the reader sees one was set


def test_the_storage_can_come_from_the_environment(tiny_model, toy_csv, tmp_path, monkeypatch):
    from tunelab.config import load_config
    from tunelab.studies import storage_for, storage_name

    monkeypatch.setenv("TUNELAB_STORAGE", f"sqlite:///{tmp_path}/env.db")
    cfg = load_config(None, quick(tiny_model, toy_csv, tmp_path / "runs"))
    assert storage_name(cfg) == f"sqlite:///{tmp_path}/env.db"
    monkeypatch.delenv("TUNELAB_STORAGE")
    assert not isinstance(storage_for(cfg), str)  # the journal file in --out


def test_redaction_of_urls_and_secret_keys():
    from tunelab.config import redact

    got = redact(
        {"a": "postgresql://me:pw@db:5432/x", "b": ["mysql://u:p%40ss@h/d?token=t1&x=1"],
         "api_key": "k", "nested": {"password": "p", "plain": "https://host/path"}}
    )  # fmt: skip
    assert got == {
        "a": "postgresql://me:***@db:5432/x", "b": ["mysql://u:***@h/d?token=***&x=1"],
        "api_key": "***", "nested": {"password": "***", "plain": "https://host/path"},
    }  # fmt: skip
    # counts whose names end like a secret's are not secrets (prompt tuning's token count)
    kept = {"num_virtual_tokens": 10, "max_new_tokens": 5, "hf_token": "h", "Secret": "s"}
    assert redact(kept) == {**kept, "hf_token": "***", "Secret": "***"}


def test_every_knob_survives_the_record(tmp_path):
    """What a run writes (config.yaml, result.json) reads back as the same config."""
    from tunelab.config import load_config
    from tunelab.methods import METHODS
    from tunelab.results import RunRecord, read_record

    for name in METHODS:
        cfg = load_config(None, [f"method={name}", f"out_dir={tmp_path}"])
        RunRecord.start(tmp_path / name, name, cfg).write(tmp_path / name)
        assert read_record(tmp_path / name).config == cfg, name


# ---------------------------------------------------------------- predict / export loading


@pytest.fixture(scope="session")  # session: xdist interleaves modules, a module one is rebuilt
def lora_run(tiny_model, toy_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora-run")
    assert main(["run", *quick(tiny_model, toy_csv, out), "method=lora"]) == 0
    return out / "lora-seed0"


def copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / run.name))


def test_an_adapter_pointing_to_another_base_model_is_refused(lora_run, tmp_path):
    run = copy_run(lora_run, tmp_path)
    config = run / "model" / "adapter_config.json"
    data = json.loads(config.read_text())
    data["base_model_name_or_path"] = "someone/malicious-model"
    config.write_text(json.dumps(data))
    for cmd in (["predict", str(run), "great film"], ["export", str(run), str(tmp_path / "x")]):
        rc, err = cli(*cmd)
        assert rc == 2 and "someone/malicious-model" in err and "refusing" in err, err
    assert not (tmp_path / "x").exists()


def test_a_pickled_adapter_is_refused_unless_the_run_allows_pickle(lora_run, tmp_path):
    import torch
    from safetensors.torch import load_file

    run = copy_run(lora_run, tmp_path)
    weights = run / "model" / "adapter_model.safetensors"
    torch.save(load_file(weights), run / "model" / "adapter_model.bin")
    weights.unlink()
    rc, err = cli("predict", str(run), "great film")
    assert rc == 2 and "model.allow_pickle=true" in err, err
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("allow_pickle: false", "allow_pickle: true"))
    rc, err = cli("predict", str(run), "great film")
    assert rc == 0, err


def test_a_pickled_full_model_is_refused_by_predict(tiny_model, toy_csv, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "runs"
    assert main(["run", *quick(tiny_model, toy_csv, out), "method=bitfit"]) == 0
    folder = out / "bitfit-seed0" / "model"
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    rc, err = cli("predict", str(out / "bitfit-seed0"), "great film")
    assert rc == 2 and "pickle" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_export_is_atomic_and_a_killed_one_can_be_retried(lora_run, tmp_path):
    target = tmp_path / "plain"
    killed = tunelab("export", str(lora_run), str(target), env={"TUNELAB_FAULT": "export:1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not target.exists()
    left = list(tmp_path.glob(".plain.*.tmp"))
    assert left  # what the killed process wrote, out of the way
    again = tunelab("export", str(lora_run), str(target))
    assert again.returncode == 0, again.stderr[-2000:]
    assert (target / "model.safetensors").exists() and not list(tmp_path.glob(".plain.*.tmp"))


# ---------------------------------------------------------------- failures are recorded


@pytest.fixture
def fault(monkeypatch):
    """Set TUNELAB_FAULT for runs in this process (its hit counters start again)."""
    from tunelab import guard

    monkeypatch.setattr(guard, "_HITS", {})
    return lambda spec: monkeypatch.setenv("TUNELAB_FAULT", spec)


def test_an_error_mid_run_is_recorded_with_its_traceback(tiny_model, toy_csv, tmp_path, fault):
    out = tmp_path / "runs"
    fault("step:3:raise")
    rc, err = cli("run", *quick(tiny_model, toy_csv, out))
    assert rc == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert "injected fault" in lines[-1] and "error.txt" in lines[-1]
    assert "Traceback" not in err
    rec = json.loads((out / "full-seed0" / "result.json").read_text())
    assert rec["status"] == "failed" and "RuntimeError: injected fault" in rec["reason"]
    assert rec["steps"] == 3  # the progress it made (the fault hits after step 3), recorded
    trace = (out / "full-seed0" / "error.txt").read_text()
    assert "Traceback" in trace and "guard.py" in trace
    # the same command runs it again (no --overwrite needed: there was no progress to keep)
    fault("none:0")
    rc, err = cli("run", *quick(tiny_model, toy_csv, out))
    assert rc == 0, err[-2000:]


def test_a_comparison_goes_on_past_a_failed_run_and_says_so(tiny_model, toy_csv, tmp_path, fault):
    out = tmp_path / "runs"
    fault("step:2:raise")  # the first run's second step; the count goes on in later runs
    rc, err = cli("compare", "--methods", "full,bitfit", *quick(tiny_model, toy_csv, out))
    assert rc == 2, err[-2000:]
    assert "1 of 2 runs failed (full-seed0)" in err.strip().splitlines()[-1]
    assert json.loads((out / "bitfit-seed0" / "result.json").read_text())["status"] == "ok"
    assert json.loads((out / "full-seed0" / "result.json").read_text())["status"] == "failed"
    report = (out / "report.md").read_text()
    assert "Failed or stopped runs" in report and "injected fault" in report


def test_a_logger_that_fails_to_close_does_not_replace_the_outcome(capsys):
    from tunelab.loggers import Loggers

    closed = []

    class Broken:
        def close(self):
            raise OSError("disk full")

    class Fine:
        def close(self):
            closed.append(True)

    Loggers(Broken(), Fine()).close()
    assert closed == [True] and "disk full" in capsys.readouterr().err


def test_running_out_of_memory_stops_the_run_with_a_recorded_failure(
    tiny_model, toy_csv, tmp_path, monkeypatch
):
    out = tmp_path / "runs"
    monkeypatch.setenv("TUNELAB_MEMORY_FLOOR", str(1 << 50))  # more than any machine has
    rc, err = cli("run", *quick(tiny_model, toy_csv, out))
    assert rc == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "out of memory" in last and "train.batch_size" in last and "Traceback" not in err
    rec = json.loads((out / "full-seed0" / "result.json").read_text())
    assert rec["status"] == "failed" and "TUNELAB_MEMORY_FLOOR" in rec["reason"]


@pytest.mark.slow
@pytest.mark.extended  # make test in 10 min: make test-extended (CI runs it after make test)
def test_a_dead_tune_worker_fails_the_command(tiny_model, toy_csv, tmp_path):
    args = quick(tiny_model, toy_csv, tmp_path / "runs", **{"tune.trials": 2})
    proc = tunelab("tune", "--methods", "bitfit", "--workers", "2", *args,
                   env={"TUNELAB_FAULT": "worker:1"})  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "worker 1 exited with code -9" in proc.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- messages


def test_a_corrupt_checkpoint_says_how_to_keep_it(tiny_model, toy_csv, tmp_path):
    out = tmp_path / "runs"
    run = out / "full-seed0"
    run.mkdir(parents=True)
    (run / "state.pt").write_bytes(b"not a checkpoint")
    rc, err = cli("run", *quick(tiny_model, toy_csv, out), "--resume")
    assert rc == 2 and "mv " in err and "--overwrite" in err and "Traceback" not in err, err
    assert (run / "state.pt").read_bytes() == b"not a checkpoint"  # kept


def test_debug_prints_the_chained_traceback(tmp_path, monkeypatch):
    args = ["run", "model.name=/nonexistent/model", f"out_dir={tmp_path}"]
    rc, err = cli("--debug", *args)
    assert rc == 2 and "Traceback" in err and "direct cause" in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("tunelab: error: cannot load model")
    rc, err = cli(*args)
    assert rc == 2 and "Traceback" not in err
    monkeypatch.setenv("TUNELAB_DEBUG", "1")
    assert "Traceback" in cli(*args)[1]


def test_two_processes_converting_the_built_in_model_convert_it_once(tmp_path):
    """The SmolLM2 conversion under its file lock: the second process waits, then finds the
    folder whole (the slow conversion itself is replaced by a stand-in that takes 2 s)."""
    script = (
        "import time, pathlib, tunelab.models as m\n"
        "def convert(folder):\n"
        "    with open(m.cache_dir() / 'conversions', 'a') as f: f.write('1')\n"
        "    time.sleep(2)\n"
        "    from tunelab.files import atomic_folder\n"
        "    with atomic_folder(folder) as tmp: (tmp / 'model.safetensors').write_text('w')\n"
        "m._convert_smollm2 = convert\n"
        "print(m.smollm2())\n"
    )
    env = {**ENV, "TUNELAB_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (tmp_path / "conversions").read_text() == "1"
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").exists()
    assert not list(tmp_path.glob(".smollm2-135m-instruct.*.tmp"))


def test_out_of_memory_while_loading_a_model_is_not_flattened(monkeypatch):
    from transformers import AutoModelForSequenceClassification

    from tunelab.models import safe_load

    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", no_memory)
    with pytest.raises(MemoryError):
        safe_load(AutoModelForSequenceClassification, "minilm", False, False)
