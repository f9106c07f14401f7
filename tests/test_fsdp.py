"""FSDP on CPU (torchrun, gloo, 2 processes; tunelab.sharding): full fine-tuning and LoRA train
sharded with the same results as one process at the same global batch; a run SIGKILLed
mid-training resumes to the same final metrics as an uninterrupted FSDP run; the saved model
is a plain one (export and reload); accelerate's own FSDP switch turns it on too; methods FSDP
cannot take are refused in one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from tests.test_reliability import ENV, finals, free_port, torchrun, tunelab
from tunelab.results import read_record

pytestmark = [pytest.mark.slow, pytest.mark.extended, pytest.mark.xdist_group("fsdp")]

COMMON = {
    "train.epochs": 3,
    "train.mixed_precision": "no",
    "data.max_train_examples": 313,  # the last global batch of 9 splits 5 / 4
    "train.save_every_steps": 7,
}
LR = {"full": 2e-3, "lora": 3e-2}
# no dropout anywhere (model and adapter): processes drawing their own masks could not match
KNOBS = {"lora": {"method.dropout": 0.0}}


@pytest.fixture(scope="module")
def no_dropout(tmp_path_factory) -> str:
    """A tiny BERT without dropout: processes that draw their own masks could not match."""
    from transformers import AutoModelForSequenceClassification

    from tests.conftest import tiny_bert_config
    from tunelab.models import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-bert-fsdp")
    torch.manual_seed(0)
    cfg = tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    return str(folder)


def sharded_run(model, data, out: Path, method: str, *extra: str, env: dict | None = None):
    over = {**COMMON, "method.name": method, "train.lr": LR[method], "train.batch_size": 8}
    over.update(KNOBS.get(method, {}))
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(free_port()), "-m", "tunelab", "run",
            *tiny_overrides(model, data, out, **over), *extra]  # fmt: skip
    return torchrun(
        argv, {**ENV, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **(env or {})}
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_trains_like_one_process(method, no_dropout, toy_csv, tmp_path):
    over = {**COMMON, "method.name": method, "train.lr": LR[method], "train.batch_size": 16}
    over.update(KNOBS.get(method, {}))
    one = tunelab("run", *tiny_overrides(no_dropout, toy_csv, tmp_path / "one", **over))
    assert one.returncode == 0, one.stderr[-2000:]
    two = sharded_run(no_dropout, toy_csv, tmp_path / "two", method, "train.fsdp=true")
    assert two.returncode == 0, two.stderr[-3000:]
    a = read_record(tmp_path / "one" / f"{method}-seed0")
    b = read_record(tmp_path / "two" / f"{method}-seed0")
    assert b.env.parallel == "fsdp x2" and a.env.parallel == ""
    # it trained, so matching it means something (LoRA on the tiny random BERT moves the loss
    # without leaving chance accuracy)
    assert a.test.accuracy > 0.9 if method == "full" else len({p["val_loss"] for p in a.curve}) == 3
    assert a.steps == b.steps
    if method == "full":  # at chance, LoRA's predictions flip on the last digits of the loss
        assert a.test.accuracy == b.test.accuracy
    assert b.test.loss == pytest.approx(a.test.loss, rel=1e-4)
    for pa, pb in zip(a.curve, b.curve, strict=True):
        assert pb["val_loss"] == pytest.approx(pa["val_loss"], rel=1e-4)
    # the saved model is a plain one: exported and reloaded, it scores the same
    folder = tmp_path / "two" / f"{method}-seed0" / "model"
    exported = tunelab("export", str(folder.parent), str(tmp_path / "plain"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain")
    ours = {k: v for k, v in plain.state_dict().items() if "classifier" in k}
    assert ours and all(torch.isfinite(v).all() for v in ours.values())
    from tunelab.inference import score_run

    assert score_run(folder.parent).accuracy == b.test.accuracy


def test_fsdp_killed_mid_training_resumes_to_the_same_end(no_dropout, toy_csv, tmp_path):
    """SIGKILL at step 11 (the checkpoint of step 7 gathered whole and written by the main
    process), then --resume under FSDP: the same final metrics as an uninterrupted run."""
    ref = sharded_run(no_dropout, toy_csv, tmp_path / "ref", "full", "train.fsdp=true")
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    killed = sharded_run(no_dropout, toy_csv, out, "full", "train.fsdp=true",
                         env={"TUNELAB_FAULT": "step:11"})  # fmt: skip
    assert killed.returncode != 0
    run_dir = out / "full-seed0"
    assert (run_dir / "state.pt").exists() and not (run_dir / "result.json").exists()
    state = torch.load(run_dir / "state.pt", weights_only=True)
    assert state["progress"]["step"] == 7  # whole tensors, as one process would write them
    n_params = sum(t.numel() for t in state["trainable"].values())
    assert n_params == read_record(tmp_path / "ref" / "full-seed0").params.trainable
    resumed = sharded_run(no_dropout, toy_csv, out, "full", "train.fsdp=true", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert finals(read_record(run_dir)) == finals(read_record(tmp_path / "ref" / "full-seed0"))


def test_accelerates_fsdp_switch_turns_it_on_and_prompt_tuning_is_refused(
    no_dropout, toy_csv, tmp_path
):
    """`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP; on CPU accelerate
    ignores it, tunelab shards anyway. Prompt tuning keeps its prompt outside the blocks."""
    COMMON_SHORT = ["train.epochs=1", "data.max_train_examples=64"]
    ok = sharded_run(no_dropout, toy_csv, tmp_path, "full", *COMMON_SHORT,
                     env={"ACCELERATE_USE_FSDP": "true"})  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert read_record(tmp_path / "full-seed0").env.parallel == "fsdp x2"
    LR["prompt"] = 3e-2
    try:
        refused = sharded_run(no_dropout, toy_csv, tmp_path, "prompt", *COMMON_SHORT,
                              "train.fsdp=true")  # fmt: skip
    finally:
        LR.pop("prompt")
    assert refused.returncode != 0
    assert "train.fsdp: prompt_tuning keeps its virtual tokens" in refused.stderr
    # each process says it in one line (torchrun adds its own traceback of a failed child)
    assert refused.stderr.count("tunelab: error: train.fsdp: prompt_tuning") == 2
    assert "[rank0]: Traceback" not in refused.stderr
    assert not os.path.exists(tmp_path / "prompt-seed0")  # refused before any run folder


def test_plan_per_process_under_fsdp_is_within_15_percent_of_the_measured_peak(tmp_path):
    """`tunelab plan --processes 2 --fsdp` against the main process's resident peak of a real
    2-process FSDP run of MiniLM (full fine-tuning, a checkpoint gathered mid-run):
    bench/fsdp_memory.py's own measurement (its result file holds LoRA and one process too)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from fsdp_memory import measured, planned

    run, plan = measured("full", tmp_path, 2), planned("full", 2)
    assert run["parallel"] == "fsdp x2"
    assert plan["expected"] == pytest.approx(run["process_peak"], rel=0.15)
    one = planned("full", 1)  # the sharded share is what the plan answers, not a whole copy
    assert plan["weights"] * 2 == pytest.approx(one["weights"], abs=2)
