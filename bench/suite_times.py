"""Time the test suites as the Makefile runs them (nothing else should run meanwhile) and keep
the result: bench/results/suite-times-<date>T<time>.json, the source of the README's block.

    python bench/suite_times.py                 # make test, then make test-extended
    python bench/suite_times.py --targets test  # one of them
    python bench/suite_times.py --render A.json B.json  # the README block from results

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
    from tunelab.measure import cpu_model
    from tunelab.precision import cpu_bf16_flag

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "native_bf16": cpu_bf16_flag() or "no"}


README = HERE.parent / "README.md"
MARK = ("<!-- suite-times:start -->", "<!-- suite-times:end -->")


def render(result: dict) -> str:
    """The README's block: each target's time and count, the machine, and the ten slowest
    tests and fixtures of ``make test`` with the file each belongs to."""
    m = result["machine"]
    lines = [
        f"Measured by `bench/suite_times.py` on {m['cpu']} ({m['cores']} cores, native bf16: "
        f"{m['native_bf16']}), commit {result['commit']}, {result['date'][:10]}:",
        "",
        "| target | wall | pytest |",
        "|---|---|---|",
    ]
    for t in result["targets"]:
        summary = t["pytest"].strip("= ")
        commit = t.get("commit", result["commit"])
        lines.append(f"| `make {t['target']}` | {t['wall_s'] / 60:.1f} min | {summary} "
                     f"(commit {commit}) |")  # fmt: skip
    test = next((t for t in result["targets"] if t["target"] == "test"), None)
    if test and test.get("slowest"):
        total = test["summed_test_s"]
        lines += ["", f"The ten slowest steps of `make test` ({total:.0f} s of test time in all, "
                  "on two workers):", "", "| s | phase | test |", "|---|---|---|"]  # fmt: skip
        for d in test["slowest"][:10]:
            lines.append(f"| {d['seconds']:.1f} | {d['phase']} | `{d['file']}::{d['test']}` |")
        per_file = list(test["per_file_s"].items())[:8]
        lines += ["", "Per file (s): " + ", ".join(f"{Path(f).stem} {s:.0f}" for f, s in per_file)]
    return "\n".join(lines)


def merged(results: list[dict]) -> dict:
    """Several result files as one: each target from the newest file that measured it, with
    its commit; the machine of the newest file (the files must come from one machine)."""
    results = sorted(results, key=lambda r: r["date"])
    if len({json.dumps(r["machine"], sort_keys=True) for r in results}) > 1:
        raise SystemExit("these result files come from different machines")
    targets = {}
    for r in results:
        for t in r["targets"]:
            targets[t["target"]] = {**t, "commit": r["commit"]}
    return {**results[-1], "targets": list(targets.values())}


def write_readme(result: dict) -> None:
    text = README.read_text()
    if MARK[0] not in text:
        return
    head, rest = text.split(MARK[0], 1)
    _, tail = rest.split(MARK[1], 1)
    README.write_text(f"{head}{MARK[0]}\n{render(result)}\n{MARK[1]}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="test,test-extended")
    ap.add_argument(
        "--render",
        nargs="+",
        help="only render the README block from these "
        "result files (their targets together, the newest measurement of each)",
    )
    args = ap.parse_args()
    if args.render:
        write_readme(merged([json.loads(Path(f).read_text()) for f in args.render]))
        return
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
    stamp = result["date"][:16].replace(":", "")  # several measurements a day: one file each
    path = HERE / "results" / f"suite-times-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    write_readme(result)
    print(f"written: {path} and the README's block")


if __name__ == "__main__":
    main()
