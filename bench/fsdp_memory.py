"""plan --processes 2 --fsdp against a real 2-process FSDP run's per-process peak (CPU, gloo).

MiniLM full fine-tuning and LoRA, 160 training examples at batch 8 per process, two
validations (so the main process gathers a resumable checkpoint mid-run), fp32: the main
process's measured resident peak (its run record) against the plan's expected process peak
for one of 2 FSDP processes, and the one-process plan and run beside it. Writes
bench/results/fsdp-memory-<date>.json naming the machine. tests/test_fsdp.py checks the same
bound (15%) in make test-extended.

    python bench/fsdp_memory.py
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

OVER = ["model.name=minilm", "tracker=none", "train.epochs=1", "data.max_train_examples=160",
        "data.max_eval_examples=64", "train.batch_size=8", "train.mixed_precision=no",
        "train.trend_points=0", "train.evals_per_epoch=2"]  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measured(method: str, out: Path, processes: int) -> dict:
    """One real run (torchrun with FSDP for 2 processes); its record's memory."""
    from tunelab.results import read_record

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    args = ["-m", "tunelab", "run", *OVER, f"method.name={method}", f"out_dir={out}"]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(free_port()), *args, "train.fsdp=true"]  # fmt: skip
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    rec = read_record(out / f"{method}-seed0")
    return {"process_peak": rec.memory.process_peak_bytes, "above_start": rec.memory.peak_bytes,
            "parallel": rec.env.parallel}  # fmt: skip


def planned(method: str, processes: int) -> dict:
    """`tunelab plan --json` in a process of its own, as a user runs it (its base resident
    set is a fresh process's, not this script's)."""
    args = [sys.executable, "-m", "tunelab", "plan", *OVER, "--methods", method, "--json"]
    if processes > 1:
        args += ["--processes", str(processes), "--fsdp"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    e = json.loads(proc.stdout)["estimates"][0]
    return {"expected": e["process"]["expected"], "low": e["process"]["low"],
            "high": e["process"]["high"], "tensor_peak": e["peak"], "weights": e["weights"],
            "optimizer": e["optimizer"]}  # fmt: skip


def compare(method: str, tmp: Path) -> dict:
    rows = {}
    for n in (1, 2):
        run, plan = measured(method, tmp / f"{method}-{n}", n), planned(method, n)
        rows[f"processes_{n}"] = {
            "measured": run,
            "plan": plan,
            "plan_over_measured": plan["expected"] / run["process_peak"],
        }
    return rows


def main() -> None:
    from demo import machine

    with tempfile.TemporaryDirectory() as tmp:
        cases = {m: compare(m, Path(tmp)) for m in ("full", "lora")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    out = {"bench": "fsdp-memory", "date": datetime.date.today().isoformat(), "commit": commit,
           "machine": machine(), "setup": OVER, "cases": cases}  # fmt: skip
    path = HERE / "results" / f"fsdp-memory-{out['date']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for m, rows in cases.items():
        for k, r in rows.items():
            print(
                f"{m} {k}: plan {r['plan']['expected'] / 2**20:.0f} MiB, measured "
                f"{r['measured']['process_peak'] / 2**20:.0f} MiB ({r['plan_over_measured']:.2f})"
            )
    print(path)


if __name__ == "__main__":
    main()
