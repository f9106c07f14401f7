"""End to end on the packaged real MiniLM and a few hundred real Rotten Tomatoes snippets:
`tunelab compare` -> table, TensorBoard events, a PEFT adapter peft loads, predict."""

from __future__ import annotations

import json

import pytest

from tunelab.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("integration")]


@pytest.fixture(scope="session")  # built once for both xdist workers (read only after)
def compared(tmp_path_factory):
    from filelock import FileLock

    from tests.conftest import shared_dir

    out = shared_dir(tmp_path_factory, "integration-compare")
    with FileLock(str(out) + ".lock"):
        if not (out / ".done").exists():
            rc = main(["compare", "--methods", "full,llrd,lora,prompt", "--out", str(out),
                       "--max-train-examples", "320", "--overwrite", "data.max_eval_examples=200",
                       "train.evals_per_epoch=2", "train.log_every=2"])  # fmt: skip
            assert rc == 0
            (out / ".done").touch()
    return out


def test_compare_writes_table_records_and_report(compared, capsys):
    md = (compared / "comparison.md").read_text()
    for method in ("full", "llrd", "lora", "prompt"):
        rec = json.loads((compared / f"{method}-seed0" / "result.json").read_text())
        # 10 steps on 320 snippets: a method stuck on the majority class is flagged, not ranked
        stuck = (
            rec["best_validation"]["accuracy"] <= rec["data"]["majority"]["validation"]["accuracy"]
        )
        row = next(line for line in md.splitlines() if line.startswith(f"| {method}"))
        assert row.split(" | ")[1] == "1" and (not stuck or "(did not learn)" in row)
        assert rec["status"] == "ok"
        assert rec["data"]["train"] == 320 and rec["data"]["test"] == 200
        assert 0 < rec["params"]["trainable"] <= rec["params"]["total"]
        assert rec["timing"]["examples_per_s"] > 0 and rec["memory"]["peak_bytes"] > 2**20
        assert len(rec["curve"]) == 2 and rec["env"]["packages"]["torch"]
    pct = {
        m: json.loads((compared / f"{m}-seed0" / "result.json").read_text())["params"][
            "trainable_pct"
        ]
        for m in ("full", "lora", "prompt")
    }
    assert pct["full"] == 100 and pct["lora"] < 2 and pct["prompt"] < pct["lora"]
    assert (compared / "report.html").exists() and (compared / "comparison.csv").exists()


def test_tensorboard_event_files_are_readable(compared):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_dirs = {p.parent for p in (compared / "full-seed0").rglob("events.out.tfevents.*")}
    tags = set()
    for d in event_dirs:
        ea = EventAccumulator(str(d))
        ea.Reload()
        tags |= set(ea.Tags()["scalars"])
    assert {"train/train_loss", "train/lr", "val/accuracy", "train/examples_per_s"} <= tags


def test_saved_adapter_loads_with_peft(compared):
    """The adapter, loaded with plain transformers + peft (not tunelab's loader), scores the
    test split as the run record says: test accuracy within one example."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.config import load_config
    from tunelab.data import load_splits
    from tunelab.models import resolve

    run = compared / "lora-seed0"
    folder = run / "model"
    assert (folder / "adapter_model.safetensors").exists()
    config = AutoConfig.from_pretrained(folder)
    assert config.id2label == {0: "negative", 1: "positive"}
    base = AutoModelForSequenceClassification.from_pretrained(resolve("minilm"), config=config)
    model = PeftModel.from_pretrained(base, folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = load_config(run / "config.yaml")
    test = load_splits(cfg.data).test
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(test), 50):
            enc = tok(test.texts[i : i + 50], padding=True, truncation=True,
                      max_length=cfg.data.max_length, return_tensors="pt")  # fmt: skip
            pred = model(**enc).logits.argmax(-1).tolist()
            correct += sum(p == y for p, y in zip(pred, test.labels[i : i + 50], strict=True))
    recorded = json.loads((run / "result.json").read_text())["test"]["accuracy"]
    assert abs(correct / len(test) - recorded) <= 1 / len(test) + 1e-9


def test_predict_command(compared, capsys):
    assert (
        main(
            [
                "predict",
                str(compared / "full-seed0"),
                "a wonderful, moving film",
                "dull and lifeless",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["a wonderful, moving film", "dull and lifeless"]
    # the label and score are the saved model's own softmax, computed here with transformers
    # under the autocast of the precision the run recorded (auto: bf16 on a CPU with native
    # bf16, fp32 elsewhere), as predict computes them
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.results import read_record

    precision = read_record(compared / "full-seed0").env.precision
    folder = compared / "full-seed0" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), bf16:
        probs = model(**tok([r["text"] for r in rows], padding=True, return_tensors="pt"))
        probs = probs.logits.float().softmax(-1)
    for r, p in zip(rows, probs, strict=True):
        assert r["label"] == model.config.id2label[int(p.argmax())]
        assert r["score"] == pytest.approx(float(p.max()), abs=1e-5)
