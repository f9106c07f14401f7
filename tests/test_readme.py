"""Every `tunelab` command the README and the docs show is parsed by the real CLI parser and
its config built (unknown flags, keys or values fail here, not in a reader's terminal); those
that need only the built-in model and data run at a tiny budget (slow)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tunelab import cli

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TINY = [
    "train.max_steps=2", "train.batch_size=4", "train.eval_batch_size=16",
    "data.max_train_examples=24", "data.max_eval_examples=12", "tracker=none",
    "train.save_model=false",  # saving a 538 MB SmolLM2 per run is not what is tested here
]  # fmt: skip
OFFLINE_UNKNOWN = re.compile(r"bert-base|imdb|glue/|HuggingFaceTB/|meta-llama|reviews\.csv|"
                             r"pairs\.jsonl|config-only-folder|runs/|merged/")  # fmt: skip


def readme_commands() -> list[str]:
    """`tunelab ...` lines of the README's and the docs' bash blocks, continuation lines
    joined, comments dropped."""
    out = []
    blocks = [b for p in PAGES for b in re.findall(r"```bash\n(.*?)```", p.read_text(), re.S)]
    for block in blocks:
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("tunelab "):
                out.append(shlex.split(line, comments=True))
    return [" ".join(shlex.quote(a) for a in c[1:]) for c in out]


COMMANDS = readme_commands()


def test_the_readme_shows_commands_of_every_kind():
    kinds = {shlex.split(c)[0] for c in COMMANDS}
    assert {"run", "compare", "tune", "plan", "predict", "export", "methods", "config"} <= kinds
    assert len(COMMANDS) >= 20  # the extractor found the blocks


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses_and_configures(command):
    args = cli.parse(shlex.split(command))
    if args.cmd in ("run", "compare", "tune", "plan"):
        cli._load(args)  # every flag, key and value checked, nothing loaded


# run at a tiny budget: the decoder comparison (its `--task` flag once did not exist); the
# other commands differ from what the rest of the suite runs only in flags, which the parse
# test above checks (make test's time budget keeps this list short)
RUNNABLE = [c for c in COMMANDS if shlex.split(c)[0] in ("run", "compare", "tune")
            and not OFFLINE_UNKNOWN.search(c)]  # fmt: skip
EXECUTABLE = [next(c for c in RUNNABLE if c.startswith("compare --model smollm2"))]


@pytest.mark.slow
@pytest.mark.parametrize("command", EXECUTABLE)
def test_readme_command_runs_at_a_tiny_budget(command, precision, tmp_path):
    argv = [*shlex.split(command), *TINY, "--out", str(tmp_path),
            f"train.mixed_precision={precision}"]  # fmt: skip
    if argv[0] == "compare":
        argv += ["--no-report"]
    argv.append("tune.trials=2")  # 2 trials instead of 12: the same code path
    if "--trials" in argv:
        argv[argv.index("--trials") + 1] = "2"
    if "--tune" in argv:
        argv[argv.index("--tune") + 1] = "2"
    if "--seeds" in argv:
        argv[argv.index("--seeds") + 1] = "1"
    if "--methods" in argv and precision != "bf16":  # one method: the command's path; every
        # method in bf16, the precision `auto` picks on most current CPUs and GPUs (issue 30)
        argv[argv.index("--methods") + 1] = argv[argv.index("--methods") + 1].split(",")[-1]
    assert cli.main(argv) == 0, command
