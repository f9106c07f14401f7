# ruff: noqa: E501  (the corpus is a table: one case per line reads best)
"""The bad-input corpus: configs, overrides, data files of every supported format, model
folders, run folders. Each case exits 2 with one line naming the problem and the fix, leaves no
run record behind, and prints no traceback (the CLI runs in this process: an exception
escaping it fails the test; tests/test_errors.py checks a few as real subprocesses)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides, toy_rows, write_csv
from tunelab.cli import main


def cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(args))
    return rc, err.getvalue()


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make(tmp: Path, kind: str) -> str:
    """Bad files and folders, made on demand."""
    rows = toy_rows(40)
    if kind == "csv_no_text":
        return str(
            write_csv(tmp / "a.csv", [{"body": r["review"], "label": r["sentiment"]} for r in rows])
        )
    if kind == "tsv_commas":  # a csv saved as .tsv: one column
        return str(write_csv(tmp / "a.tsv", rows))
    if kind == "jsonl_bad_line":
        path = jsonl(tmp / "a.jsonl", rows)
        path.write_text(path.read_text() + '{"review": "cut short", "sentim\n')
        return str(path)
    if kind == "jsonl_not_object":
        return str(jsonl(tmp / "a.jsonl", [*rows[:5], ["a", "list"]]))
    if kind == "jsonl_mixed_labels":
        mixed = [
            {"text": r["review"], "label": i % 2 if i < 20 else r["sentiment"]}
            for i, r in enumerate(rows)
        ]
        return str(jsonl(tmp / "a.jsonl", mixed))
    if kind == "jsonl_all_empty_labels":
        return str(jsonl(tmp / "a.jsonl", [{"text": r["review"], "label": ""} for r in rows]))
    if kind == "jsonl_one_class":
        return str(jsonl(tmp / "a.jsonl", [{"text": r["review"], "label": "pos"} for r in rows]))
    if kind == "jsonl_no_label":
        return str(jsonl(tmp / "a.jsonl", [{"text": r["review"]} for r in rows]))
    if kind == "csv_latin1":
        path = tmp / "a.csv"
        path.write_bytes(b"review,sentiment\n" + "caf\xe9 was good,pos\n".encode("latin-1") * 30)
        return str(path)
    if kind == "binary_csv":
        path = tmp / "a.csv"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
        return str(path)
    if kind == "parquet_garbage":
        path = tmp / "a.parquet"
        path.write_bytes(b"not a parquet file at all")
        return str(path)
    if kind == "csv_header_only":
        path = tmp / "a.csv"
        path.write_text("review,sentiment\n")
        return str(path)
    if kind == "csv_empty_file":
        path = tmp / "a.csv"
        path.write_text("")
        return str(path)
    if kind == "data_folder":
        (tmp / "data").mkdir()
        return str(tmp / "data")
    if kind == "missing_file":
        return str(tmp / "nope.csv")
    if kind == "unknown_suffix":
        path = tmp / "a.xlsx"
        path.write_bytes(b"PK\x03\x04")
        return str(path)
    if kind == "model_config_only":
        from tests.conftest import tiny_bert_config

        tiny_bert_config().save_pretrained(tmp / "model")
        return str(tmp / "model")
    if kind == "model_pickle_only":
        import torch
        from transformers import AutoModelForSequenceClassification

        from tests.conftest import tiny_bert_config
        from tunelab.models import load_tokenizer

        m = AutoModelForSequenceClassification.from_config(tiny_bert_config())
        m.config.save_pretrained(tmp / "model")
        torch.save(m.state_dict(), tmp / "model" / "pytorch_model.bin")
        load_tokenizer("minilm").save_pretrained(tmp / "model")
        return str(tmp / "model")
    if kind == "empty_folder":
        (tmp / "empty").mkdir()
        return str(tmp / "empty")
    if kind == "out_is_file":
        (tmp / "file").write_text("x")
        return str(tmp / "file")
    if kind == "yaml_list":
        (tmp / "c.yaml").write_text("- a\n- b\n")
        return str(tmp / "c.yaml")
    if kind == "yaml_broken":
        (tmp / "c.yaml").write_text("train: {lr: 1e-3\n")
        return str(tmp / "c.yaml")
    if kind == "yaml_unknown_key":
        (tmp / "c.yaml").write_text("train: {learning_rate: 1e-3}\n")
        return str(tmp / "c.yaml")
    if kind == "yaml_bad_value":
        (tmp / "c.yaml").write_text("train: {batch_size: many}\n")
        return str(tmp / "c.yaml")
    raise KeyError(kind)


# name -> (arguments after `tunelab`, needles of the one error line). {data}, {model}, {out},
# {file:<kind>} are filled in; `run` cases get the tiny model and toy data unless they set them.
CASES = {
    # overrides and config values
    "unknown method": (["run", "method=lorax"], ["unknown method 'lorax'", "full"]),
    "unknown key": (["run", "train.lrr=1"], ["unknown config key 'train.lrr'"]),
    "unknown section": (["run", "optim.lr=1"], ["unknown config key 'optim'", "train"]),
    "lr not a number": (["run", "train.lr=fast"], ["train.lr must be a number"]),
    "negative lr": (["run", "train.lr=-1e-3"], ["train.lr must be > 0"]),
    "zero batch": (["run", "train.batch_size=0"], ["train.batch_size must be > 0"]),
    "fractional batch": (["run", "train.batch_size=2.5"], ["train.batch_size"]),
    "negative examples": (["run", "data.max_train_examples=-5"], ["must be > 0"]),
    "zero epochs": (["run", "train.epochs=0"], ["train.epochs must be > 0"]),
    "bad precision": (
        ["run", "train.mixed_precision=fp8"],
        ["train.mixed_precision must be one of"],
    ),
    "bad metric": (["run", "train.metric=f1"], ["train.metric must be one of"]),
    "bad task": (["run", "task=regression"], ["task must be one of"]),
    "bad knob type": (["run", "method=lora", "method.r=abc"], ["method.r"]),
    "dropout out of range": (["run", "method=lora", "method.dropout=1.5"], ["method.dropout"]),
    "unknown knob": (["run", "method=lora", "method.rank=4"], ["unknown config key 'method.rank'"]),
    "bad prompt init": (
        ["run", "method=prompt", "method.init=txt"],
        ["method.init must be one of"],
    ),
    "response column without causal-lm": (
        ["run", "data.response_column=answer"],
        ["task=causal-lm"],
    ),
    "template without text": (["run", "task=causal-lm", "data.template=Say it"], ["{text}"]),
    "label words count": (["run", "task=causal-lm", "data.label_words=[good]"], ["label_words"]),
    # config files
    "config file missing": (["run", "--config", "{out}/none.yaml"], ["does not exist"]),
    "config not a mapping": (["run", "--config", "{file:yaml_list}"], ["mapping"]),
    "config not yaml": (["run", "--config", "{file:yaml_broken}"], ["not valid YAML"]),
    "config unknown key": (["run", "--config", "{file:yaml_unknown_key}"], ["train.learning_rate"]),
    "config bad value": (["run", "--config", "{file:yaml_bad_value}"], ["train.batch_size"]),
    # data files
    "missing text column": (
        ["run", "data.dataset={file:csv_no_text}"],
        ["no text column", "--text-column"],
    ),
    "named text column absent": (
        ["run", "data.text_column=body"],
        ["text column 'body' not found"],
    ),
    "tsv with commas": (["run", "data.dataset={file:tsv_commas}"], ["column"]),
    "jsonl bad line": (
        ["run", "data.dataset={file:jsonl_bad_line}"],
        ["line 41", "not valid JSON"],
    ),
    "jsonl not an object": (
        ["run", "data.dataset={file:jsonl_not_object}"],
        ["line 6", "JSON object"],
    ),
    "mixed label types": (
        ["run", "data.dataset={file:jsonl_mixed_labels}"],
        ["'label' mixes numbers", "neg"],
    ),
    "all labels empty": (
        ["run", "data.dataset={file:jsonl_all_empty_labels}"],
        ["no labelled training examples"],
    ),
    "one class": (["run", "data.dataset={file:jsonl_one_class}"], ["only one class"]),
    "no label column": (
        ["run", "data.dataset={file:jsonl_no_label}"],
        ["no label column", "--label-column"],
    ),
    "not utf-8": (["run", "data.dataset={file:csv_latin1}"], ["line 2 is not UTF-8", "0xe9"]),
    "binary file": (["run", "data.dataset={file:binary_csv}"], ["not UTF-8"]),
    "parquet garbage": (["run", "data.dataset={file:parquet_garbage}"], ["cannot load dataset"]),
    "header only": (
        ["run", "data.dataset={file:csv_header_only}"],
        ["no labelled training examples"],
    ),
    "empty file": (
        ["run", "data.dataset={file:csv_empty_file}"],
        ["no labelled training examples"],
    ),
    "dataset is a folder": (["run", "data.dataset={file:data_folder}"], ["cannot load dataset"]),
    "data file missing": (["run", "data.dataset={file:missing_file}"], ["does not exist"]),
    "unknown format": (
        ["run", "data.dataset={file:unknown_suffix}"],
        ["cannot load dataset", ".csv"],
    ),
    "too few examples to split": (["run", "data.max_train_examples=1"], ["only one class"]),
    # models
    "model folder without weights": (
        ["run", "model.name={file:model_config_only}"],
        ["no weights", "tunelab plan"],
    ),
    "pickle weights refused": (
        ["run", "model.name={file:model_pickle_only}"],
        ["pickle", "model.allow_pickle=true"],
    ),
    "empty model folder": (["run", "model.name={file:empty_folder}"], ["cannot load model"]),
    "unknown model id": (["run", "model.name=/nonexistent/model"], ["cannot load model"]),
    # output and run folders
    "output folder is a file": (
        ["run", "out_dir={file:out_is_file}"],
        ["cannot write the run folder"],
    ),
    "output folder not writable": (
        ["run", "out_dir=/proc/tunelab-runs"],
        ["cannot write the run folder"],
    ),
    "run name climbs out": (["run", "name=../elsewhere"], ["name must be a plain folder name"]),
    "run name absolute": (["run", "name=/tmp/elsewhere"], ["name must be a plain folder name"]),
    "run name with a folder": (["run", "name=a/b"], ["name must be a plain folder name"]),
    "report of nothing": (["report", "{out}/no-runs"], ["no run records"]),
    "predict without a run": (["predict", "{file:empty_folder}", "text"], ["run"]),
    # commands and flags
    "seeds zero": (["compare", "--seeds", "0"], ["--seeds must be at least 1"]),
    "unknown compare method": (["compare", "--methods", "full,lorra"], ["lorra"]),
    "bad train sizes": (["compare", "--train-sizes", "ten"], ["--train-sizes"]),
    "tune empty range": (["tune", "tune.space.lora.r=[]", "--methods", "lora"], ["tune.space"]),
    "workers zero": (["tune", "--workers", "0"], ["--workers must be at least 1"]),
    "plan bad memory": (["plan", "--memory", "lots"], ["--memory"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tiny_model, toy_csv, tmp_path):
    args, needles = CASES[case]
    out = tmp_path / "runs"
    filled = []
    for a in args:
        if "{file:" in a:
            kind = a[a.index("{file:") + 6 : a.index("}", a.index("{file:"))]
            a = a.replace("{file:" + kind + "}", make(tmp_path, kind))
        filled.append(a.replace("{out}", str(out)))
    cmd = filled[0]
    if cmd in ("run", "compare", "tune"):
        base = tiny_overrides(tiny_model, toy_csv, out)
        filled = [cmd, *base, *filled[1:]]  # later overrides win
    elif cmd == "plan":
        filled = [*filled, "--out", str(out)]
    rc, err = cli(*filled)
    lines = [ln for ln in err.splitlines() if ln.startswith("tunelab: error:")]
    assert rc == 2 and len(lines) == 1, err[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not [p for p in out.rglob("result.json") if json.loads(p.read_text())["status"] == "ok"]
    assert not list(out.rglob("state.pt"))


def test_the_docs_state_the_corpus_size():
    readme = (Path(__file__).parent.parent / "docs" / "reliability.md").read_text()
    stated = re.search(r"a corpus of (\d+) cases", readme)
    assert stated and int(stated.group(1)) == len(CASES) >= 40


def test_rows_with_empty_labels_are_counted(tiny_model, tmp_path):
    rows = toy_rows(60)
    for r in rows[:7]:
        r["sentiment"] = ""
    data = write_csv(tmp_path / "gaps.csv", rows)
    rc, err = cli(
        "run", *tiny_overrides(tiny_model, str(data), tmp_path / "runs", **{"train.epochs": 1})
    )
    assert rc == 0, err
    assert "7 of 60 rows have an empty 'sentiment' and are left out" in err


def test_huge_texts_are_truncated_not_refused(tiny_model, tmp_path):
    rows = toy_rows(60)
    rows[0]["review"] = "good " * 200_000  # a megabyte in one cell
    data = write_csv(tmp_path / "huge.csv", rows)
    over = tiny_overrides(tiny_model, str(data), tmp_path / "runs", **{"train.epochs": 1})
    rc, err = cli("run", *over)
    assert rc == 0, err
    # the megabyte row is in one split, cut to data.max_length tokens (not dropped)
    from tunelab.config import load_config
    from tunelab.tasks import prepare_data

    cfg = load_config(None, over)
    d = prepare_data(cfg)
    lengths = [n for split in (d.train, d.validation, d.test) for n in split.lengths]
    assert len(lengths) == 60 and max(lengths) == cfg.data.max_length


def test_corrupt_records_are_skipped_by_report_with_the_file_named(tiny_model, toy_csv, tmp_path):
    out = tmp_path / "runs"
    rc, _ = cli("run", *tiny_overrides(tiny_model, toy_csv, out, **{"train.epochs": 1}))
    assert rc == 0
    bad = out / "broken-seed0" / "result.json"
    bad.parent.mkdir()
    bad.write_text('{"name": "broken", "method": "full", "conf')  # truncated by a full disk
    rc, err = cli("report", str(out))
    assert rc == 0
    assert f"skipping {bad}" in err.replace("'", "") or str(bad) in err
