"""Time the test suites as the Makefile runs them (nothing else should run meanwhile) and keep
the result: bench/results/suite-times-<date>.json, the source of the README's suite times.

    python bench/suite_times.py                 # make test, then make test-extended
    python bench/suite_times.py --targets test  # one of them

Each target runs through `make` (so its setup step and its pytest markers are the ones CI
uses); the JSON holds the wall seconds, the exit status and pytest's last line (passed,
failed, skipped counts) per target, the git commit and the machine's core count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).parent


def timed(target: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(["make", target], cwd=HERE.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " in " in ln and "passed" in ln), "")
    print(f"make {target}: exit {proc.returncode}, {wall:.0f} s: {summary.strip('= ')}")
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
    return {"target": target, "exit": proc.returncode, "wall_s": round(wall, 1), "pytest": summary}


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
        "targets": [timed(t) for t in args.targets.split(",")],
    }
    path = HERE / "results" / f"suite-times-{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
