"""The Python API (docs/api.md): its example runs as written, on the packaged model and real
data, and returns the typed records the commands print; its other blocks parse and name
functions tunelab has; bad arguments are one-line TunelabErrors."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import tunelab

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.mark.slow
@pytest.mark.extended  # ~45 s of real training: make test-extended (CI runs it after make test)
def test_the_documented_comparison_runs_into_a_dataframe(tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks()[0], str(DOC), "exec"), scope)  # as written in the docs
    cmp, df = scope["cmp"], scope["df"]
    assert isinstance(df, pd.DataFrame)
    assert {"full", "lora"} <= set(df["method"]) and {"test_acc", "test_acc_ci95"} <= set(df)
    for rec in cmp.records:  # every number of the table comes from a run record on disk
        assert rec.ok and (cmp.out / rec.name / "result.json").exists()
        row = df[df["method"] == rec.method].iloc[0]
        assert row["test_acc"] == pytest.approx(100 * rec.test.accuracy)
        assert len(rec.test.correct) == rec.data.test  # per test row, for the paired verdicts
        assert rec.test.correct.count("1") == round(rec.test.accuracy * rec.data.test)
    assert cmp.recommendation == cmp.analysis.recommendation and cmp.recommendation
    assert cmp.report.resolve() == tmp_path / "runs" / "api-demo" / "report.html"
    assert cmp._repr_html_().startswith("<iframe srcdoc=")
    assert any("McNemar" in v or "did not learn" in v for v in cmp.analysis.verdicts)


def test_every_block_parses_and_calls_what_tunelab_has():
    for code in blocks():
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "tunelab":
                assert node.attr in tunelab.__all__, node.attr


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(tunelab.TunelabError, match="unknown argument.*'modle'"):
        tunelab.compare("full", modle="minilm", out=str(tmp_path))
    with pytest.raises(tunelab.TunelabError, match="unknown method"):
        tunelab.compare("full,lorra", out=str(tmp_path))
    with pytest.raises(tunelab.TunelabError, match="train.lr"):
        tunelab.run(out=str(tmp_path), set={"train.lr": "fast"})
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_the_command_is_a_layer_over_the_functions():
    cfg = tunelab.load(["method=lora", "train.lr=3e-4"], model="minilm", epochs=2,
                       precision="fp32")  # fmt: skip
    from tunelab.cli import _load, parse

    args = parse(["run", "method=lora", "train.lr=3e-4", "--model", "minilm", "--epochs", "2"])
    same = _load(args)
    assert (cfg.method_name, cfg.train.lr, cfg.train.epochs) == ("lora", 3e-4, 2)
    assert (same.method_name, same.train.lr, same.train.epochs) == ("lora", 3e-4, 2)
    assert cfg.train.mixed_precision == "no"
