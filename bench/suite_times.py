"""Time the test suites as the Makefile runs them (nothing else should run meanwhile) and keep
the result: bench/results/suite-times-<date>.json, the source of the README's suite times.

    python bench/suite_times.py                 # make test, then make test-extended
    python bench/suite_times.py --targets test  # one of them

Each target runs through `make` (so its setup step, its pytest markers and its xdist workers
are the ones CI uses); the JSON holds the wall seconds, the exit status and pytest's last line
(passed, failed, skipped counts) per target, every test's and fixture's seconds (pytest
`--durations=0`, summed per file too), the git commit and the machine (CPU model, cores,
native bf16 flags).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).parent


DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+?)::(\S+)")


def timed(target: str) -> dict:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTEST_ADDOPTS": "--durations=0 --durations-min=0.5"}
    proc = subprocess.run(["make", target], cwd=HERE.parent, capture_output=True, text=True,
                          env=env)  # fmt: skip
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " in " in ln and "passed" in ln), "")
    print(f"make {target}: exit {proc.returncode}, {wall:.0f} s: {summary.strip('= ')}")
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
    durations = [
        {"seconds": float(m[1]), "phase": m[2], "file": m[3], "test": m[4]}
        for m in map(DURATION.match, lines)
        if m
    ]
    per_file: dict[str, float] = {}
    for d in durations:
        per_file[d["file"]] = round(per_file.get(d["file"], 0.0) + d["seconds"], 1)
    return {
        "target": target, "exit": proc.returncode, "wall_s": round(wall, 1), "pytest": summary,
        "summed_test_s": round(sum(d["seconds"] for d in durations), 1),
        "per_file_s": dict(sorted(per_file.items(), key=lambda kv: -kv[1])),
        "slowest": sorted(durations, key=lambda d: -d["seconds"])[:25],
    }  # fmt: skip


def machine() -> dict:
    """The CPU the times were taken on: model, cores, native bf16 (the suite's bf16 cases are
    emulated, and slower, without it)."""
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            rows = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        model = rows[0] if rows else ""
    except OSError:
        pass
    from tunelab.precision import cpu_bf16_flag

    return {"cpu": model or platform.processor(), "cores": os.cpu_count(),
            "native_bf16": cpu_bf16_flag() or "no"}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="test,test-extended")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "commit": commit,
        "cores": os.cpu_count(),
        "machine": machine(),
        "targets": [timed(t) for t in args.targets.split(",")],
    }
    path = HERE / "results" / f"suite-times-{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
