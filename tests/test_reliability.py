"""No lost work: real subprocesses killed with SIGKILL at three points resume to the same final
metrics as an uninterrupted run; SIGINT / SIGTERM stop a run cleanly (checkpoint, record,
exit 130 / 143); a stopped comparison resumes with its finished runs untouched; two
comparisons on one folder share the runs; two processes (torchrun, gloo) train one run with
DDP and match one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import as_a_shell_starts, tiny_overrides
from tunelab.results import load_records, read_record
from tunelab.rundir import RunClaimed, claim, release_run_dir

# real subprocesses: in `make test`, not in `make test-fast`; one xdist worker (its fixture)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
# 3 epochs of 320 toy examples at batch 16 = 60 steps; a checkpoint every 7 steps and at
# each of the 3 validations; bit-identical on CPU with the same seed
KILL = {"train.epochs": 3, "train.save_every_steps": 7, "method.name": "lora"}


def tunelab(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab", *args],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=300,
        **kw,
    )


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        as_a_shell_starts([sys.executable, "-m", "tunelab", *args]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run torchrun in its own process group, so a hang kills its workers too."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def finals(rec) -> tuple:
    return rec.status, rec.steps, rec.test, rec.best_validation, rec.best_step


@pytest.fixture(scope="session")  # session: xdist interleaves modules, a module one is rebuilt
def reference(tiny_model, toy_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = tunelab("run", *tiny_overrides(tiny_model, toy_csv, out, **KILL))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return read_record(out / "lora-seed0")


@pytest.mark.parametrize(
    "point",
    [
        "step:11",  # mid-epoch, 4 steps after the checkpoint at step 7
        "checkpoint:3",  # while the third checkpoint is being written (before its rename)
        "final-save:1",  # model files written, run record not yet
    ],
)
def test_sigkill_then_resume_ends_like_an_uninterrupted_run(
    point, reference, tiny_model, toy_csv, tmp_path
):
    args = ["run", *tiny_overrides(tiny_model, toy_csv, tmp_path, **KILL)]
    killed = tunelab(*args, env={"TUNELAB_FAULT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "lora-seed0"
    assert not (run_dir / "result.json").exists() or read_record(run_dir).status != "ok"
    assert (run_dir / "state.pt").exists()  # the last complete checkpoint survived
    resumed = tunelab(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rec = read_record(run_dir)
    assert finals(rec) == finals(reference)
    assert not (run_dir / "state.pt").exists() and (run_dir / "model").is_dir()
    assert not list(run_dir.glob(".*.tmp"))  # the killed write's leftovers are gone or ignored


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_cleanly_and_resume_goes_on(sig, code, tiny_model, toy_csv, tmp_path):
    over = {"train.epochs": 15, "train.log_every": 1, "data.max_train_examples": 160}
    args = ["run", *tiny_overrides(tiny_model, toy_csv, tmp_path, **over)]
    proc = start(*args)
    run_dir = tmp_path / "full-seed0"
    wait_for(
        lambda: (
            (run_dir / "metrics.jsonl").exists()
            and (run_dir / "metrics.jsonl").stat().st_size > 300
        )
    )
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    rec = read_record(run_dir)
    assert rec.status == "interrupted" and rec.steps > 0 and "--resume" in rec.reason
    assert (run_dir / "state.pt").exists()
    done = tunelab(*args, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    final = read_record(run_dir)
    assert final.status == "ok" and final.steps == 150  # 15 epochs x 10 steps


def test_stopped_compare_resumes_with_finished_runs_untouched(tiny_model, toy_csv, tmp_path):
    over = {"train.epochs": 20, "data.max_train_examples": 160}
    args = ["compare", *tiny_overrides(tiny_model, toy_csv, tmp_path, **over)]
    args += ["--methods", "bitfit,full", "--no-report"]
    proc = start(*args)
    first = tmp_path / "bitfit-seed0" / "result.json"
    second = tmp_path / "full-seed0" / "metrics.jsonl"
    wait_for(lambda: first.exists() and second.exists())
    before = first.read_bytes()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert read_record(tmp_path / "full-seed0").status == "interrupted"
    done = tunelab(*args, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert first.read_bytes() == before  # the finished run was not run again
    assert [r.status for r in load_records(tmp_path)] == ["ok", "ok"]


def test_two_compares_on_one_folder_share_the_runs(tiny_model, toy_csv, tmp_path):
    over = tiny_overrides(tiny_model, toy_csv, tmp_path, **{"tracker": "tensorboard"})
    args = ["compare", *over, "--methods", "full,bitfit,lora,prompt", "--resume", "--no-report"]
    a, b = start(*args), start(*args)
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, [o[1][-1500:] for o in outs]
    recs = load_records(tmp_path)
    assert sorted(r.method for r in recs) == ["bitfit", "full", "lora", "prompt"]
    assert all(r.status == "ok" for r in recs)
    for r in recs:  # each run trained by one process: TensorBoard files of one pid
        events = list(Path(r.run_dir).rglob("events.out.tfevents.*"))
        assert events and len({e.name.split(".")[-2] for e in events}) == 1, r.name
    assert not list(tmp_path.rglob(".claim"))


def test_claims_are_exclusive_and_dead_claims_are_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run_dir / ".claim").write_text(f"{other.pid}@{os.uname().nodename}")
        with pytest.raises(RunClaimed, match=str(other.pid)):
            claim(run_dir)
    finally:
        other.kill()
        other.wait()
    claim(run_dir)  # its owner is gone: taken over
    assert (run_dir / ".claim").read_text().startswith(f"{os.getpid()}@")
    release_run_dir(run_dir)
    assert not (run_dir / ".claim").exists()


def test_resume_state_is_loaded_without_running_pickled_code(tiny_model, toy_csv, tmp_path):
    """A planted state.pt that would run code when unpickled is refused, not executed."""
    import torch

    over = tiny_overrides(tiny_model, toy_csv, tmp_path, **{"train.epochs": 1})
    run_dir = tmp_path / "full-seed0"
    run_dir.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"progress": Evil()}, run_dir / "state.pt")
    proc = tunelab("run", *over, "--resume")
    assert proc.returncode == 2 and "cannot read the checkpoint" in proc.stderr
    assert not marker.exists()


def test_two_processes_match_one_with_the_same_global_batch(tmp_path_factory, toy_csv, tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo): DDP, sharded evaluation gathered, one writer."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tests.conftest import tiny_bert_config
    from tunelab.models import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-bert-nodropout")
    torch.manual_seed(0)
    cfg = tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    common = {
        "train.epochs": 3,
        "train.lr": 2e-3,
        "train.mixed_precision": "no",
        "tracker": "tensorboard",
        # 313 = 19 x 16 + 9: the last global batch splits 5 / 4 across the processes, and
        # every example is still seen once, weighted as in one process's batch of 9
        "data.max_train_examples": 313,
    }
    one = tunelab(
        "run",
        *tiny_overrides(
            str(folder), toy_csv, tmp_path / "one", **common, **{"train.batch_size": 16}
        ),
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(free_port()), "-m", "tunelab", "run",
            *tiny_overrides(str(folder), toy_csv, tmp_path / "two", **common), "train.batch_size=8",
        ],
        env={**ENV, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (
        read_record(tmp_path / "one" / "full-seed0"),
        read_record(tmp_path / "two" / "full-seed0"),
    )
    assert a.steps == b.steps and a.data.validation == b.data.validation
    assert b.timing.train_examples_seen == a.timing.train_examples_seen == 3 * 313
    assert a.test.accuracy > 0.9  # it learned, so the comparison means something
    assert b.test.accuracy == a.test.accuracy
    assert b.test.loss == pytest.approx(a.test.loss, rel=1e-4)
    for pa, pb in zip(a.curve, b.curve, strict=True):
        assert pa["step"] == pb["step"]
        assert pb["val_loss"] == pytest.approx(pa["val_loss"], rel=1e-4)
    # one writer: one event file, one record, no leftovers
    events = list((tmp_path / "two").rglob("events.out.tfevents.*"))
    assert events and len({e.name.split(".")[-2] for e in events}) == 1  # the main process's
    rows = [
        json.loads(x)
        for x in (tmp_path / "two" / "full-seed0" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len({r["step"] for r in rows if "val_loss" in r}) == len(
        [r for r in rows if "val_loss" in r]
    )
