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
        pytest.param("checkpoint:3", marks=pytest.mark.extended),  # while the third
        # checkpoint is being written (before its rename); both: make test-extended
        pytest.param("final-save:1", marks=pytest.mark.extended),  # model files, no record yet
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


@pytest.mark.parametrize(
    "sig, code",
    [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.extended)],
)
def test_signal_stops_cleanly_and_resume_goes_on(sig, code, tiny_model, toy_csv, tmp_path):
    over = {"train.epochs": 8, "train.log_every": 1, "data.max_train_examples": 160}
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
    assert final.status == "ok" and final.steps == 80  # 8 epochs x 10 steps


@pytest.mark.extended  # make test in 10 min: make test-extended (CI runs it after make test)
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


@pytest.mark.extended  # make test in 10 min: make test-extended (the claim race: below)
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


HOLD = """
import sys, time
from pathlib import Path
from tunelab.rundir import claim
claim(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(60)
"""


def test_claims_are_exclusive_and_dead_claims_are_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(RunClaimed, match=str(other.pid)):
            claim(run_dir)
    finally:
        other.kill()  # SIGKILL: no clean-up ran, its .claim file is still there
        other.wait()
    assert (run_dir / ".claim").read_text().startswith(f"{other.pid}@")
    claim(run_dir)  # its owner is gone and the kernel released its lock: taken over
    assert (run_dir / ".claim").read_text().startswith(f"{os.getpid()}@")
    claim(run_dir)  # this process's own claim is kept
    release_run_dir(run_dir)
    assert not (run_dir / ".claim").exists()


def test_a_run_finished_while_waiting_for_its_folder_is_not_run_again(tmp_path):
    """compare --resume reads a run's record, finds it unfinished, then waits for the folder
    the other process holds: once that process finished it, the claim returns its record."""
    from tunelab.config import load_config
    from tunelab.results import RunRecord, Scores
    from tunelab.rundir import claim_run_dir

    run_dir, cfg = tmp_path / "lora-seed0", load_config(None, ["method=lora"])
    rec = RunRecord.start(run_dir, "lora", cfg)
    rec.finish(test=Scores(accuracy=0.75), steps=7)
    rec.write(run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    done = claim_run_dir(run_dir, overwrite=False, resume=True, cfg=cfg)
    assert done is not None and done.ok and done.test.accuracy == 0.75
    assert sorted(p.name for p in run_dir.iterdir()) == sorted({*before, ".claim.lock"})
    claim(run_dir)  # released: free for anyone
    release_run_dir(run_dir)
    assert claim_run_dir(run_dir, overwrite=True, resume=False, cfg=cfg) is None  # replaced
    assert not (run_dir / "result.json").exists()
    release_run_dir(run_dir)


RACE = """
import json, sys, time
from pathlib import Path
from tunelab.rundir import RunClaimed, claim
root, me, go = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, go - time.time()))  # both start together
won = []
for i in range(int(sys.argv[4])):
    try:
        claim(root / str(i))
        won.append(i)
    except RunClaimed:
        pass
(root / f"won-{me}.json").write_text(json.dumps(won))
other = root / f"won-{'b' if me == 'a' else 'a'}.json"
while not other.exists():  # hold every claim until the other process is done too
    time.sleep(0.05)
"""


def test_two_claimers_racing_never_both_win(tmp_path):
    """Two processes claim the same 300 fresh folders at the same moment, many times over:
    every folder has exactly one owner (the old claim file, created then written, let a
    claimer that read it empty in between take it over too)."""
    n = 300
    for i in range(n):
        (tmp_path / str(i)).mkdir()
    go = time.time() + 5.0  # after both have imported tunelab
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), me, str(go), str(n)])
             for me in ("a", "b")]  # fmt: skip
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    a, b = (set(json.loads((tmp_path / f"won-{m}.json").read_text())) for m in ("a", "b"))
    assert not a & b, f"both processes claimed {sorted(a & b)[:10]}"
    assert a | b == set(range(n))  # and none was left unclaimed


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


@pytest.mark.extended  # make test in 10 min: make test-extended (CI runs it after make test)
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
