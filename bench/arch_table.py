"""The README's architecture x method table, produced from the test suite's own matrix.

Runs tests/test_architectures.py (every case, slow ones included) with TUNELAB_MATRIX set, so
each case appends what happened to it (ran, or refused and why); keeps those outcomes in
bench/results/arch-matrix-<date>.json (bench/figures.py puts the table in the docs).
Nothing in the table is typed by hand: a case that crashes fails the test and this script.

    .venv/bin/python bench/arch_table.py
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- arch-table:start -->", "<!-- arch-table:end -->"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
from tests.archs import outcome_key  # noqa: E402
from tunelab.methods import METHODS  # noqa: E402

COLUMNS = [*METHODS, "plan"]  # every method tunelab has, in METHODS order


def run_matrix() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "matrix.jsonl"
        env = {**os.environ, "TUNELAB_MATRIX": str(out), "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
               "tests/test_architectures.py",
               "-k", "runs_or_is_refused or plan_answers"]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, env=env)
        if done.returncode != 0:
            sys.exit(f"the architecture matrix failed (pytest exit {done.returncode})")
        return [json.loads(line) for line in out.read_text().splitlines()]


def render(rows: list[dict]) -> str:
    reasons: dict[str, str] = {}
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        cell = "yes"
        if r["outcome"] == "refused":
            why = short_reason(r["method"], r["detail"])
            mark = reasons.setdefault(why, chr(ord("a") + len(reasons)))
            cell = f"no ({mark})"
        cells.setdefault((r["family"], r["task"]), {})[r["method"]] = cell
    head = "| family | task | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for (family, task), row in cells.items():
        lines.append(
            f"| {family} | {task} | " + " | ".join(row.get(c, "-") for c in COLUMNS) + " |"
        )
    notes = [f"- ({mark}) {why}" for why, mark in reasons.items()]
    ran = sum(r["outcome"] == "ran" for r in rows)
    total = (
        f"{len(rows)} cases: {ran} ran (two training steps, saved, reloaded to the same test "
        f"metrics, a mixture of experts in bf16 to its test loss within 2e-3, a known gap; "
        f"`plan` answered), {len(rows) - ran} refused in one line, none crashed."
    )
    return "\n".join([total, "", *lines, "", *notes])


def short_reason(method: str, detail: str) -> str:
    """The refusal without the architecture's name, so one note serves every family."""
    if "past_key_values" in detail:
        return (
            f"{method}: the model's forward no longer accepts past_key_values under "
            f"transformers 5, which peft's prefix tuning needs"
        )
    if "bias" in detail:
        return f"{method}: the model has no bias terms to train"
    if "routed experts" in detail:
        return (
            f"{method}: a mixture of experts' routed experts are fused 3-D weights, which peft's "
            f"IA3 cannot rescale (LoRA reaches them: method.target_parameters=[experts])"
        )
    if "no sequence-classification head" in detail:
        return (
            "every method: transformers has no sequence-classification head for the family "
            "(task=causal-lm classifies with label words)"
        )
    if "Conv1D" in detail:
        return f"{method}: peft cannot adapt GPT-2's Conv1D layers with it"
    if "share" in detail:
        return (
            f"{method}: the layers share one block of weights (ALBERT), so there are no lower "
            f"and upper layers to tell apart"
        )
    return f"{method}: {detail}"


def main() -> None:
    rows = run_matrix()
    day = datetime.date.today().isoformat()
    results = ROOT / "bench" / "results" / f"arch-matrix-{day}.json"
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps(rows, indent=1) + "\n")
    expected = ROOT / "tests" / "data" / "arch-expected.json"  # what the matrix test enforces
    table = {f"{r['family']} {r['task']} {r['method']}": outcome_key(r["outcome"], r["detail"])
             for r in rows}  # fmt: skip
    expected.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
    print(render(rows))
    print(f"{len(rows)} cases -> {results.relative_to(ROOT)} and {expected.relative_to(ROOT)} "
          "(review its diff); the docs: python bench/figures.py")  # fmt: skip


if __name__ == "__main__":
    main()
