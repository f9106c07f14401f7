"""The run record on disk: written atomically, read back by compare and report."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RESULT = "result.json"
METRICS = "metrics.jsonl"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (see write_text)."""
    write_text(path, json.dumps(data, indent=2, default=str))


def write_text(path: Path, text: str) -> None:
    """Write via a temporary file + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_metrics(run_dir: Path, row: dict) -> None:
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_result(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RESULT
    return json.loads(path.read_text()) if path.exists() else None


def find_runs(root: Path) -> list[Path]:
    """Run folders under ``root`` (any folder holding a result.json), sorted by name."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob(RESULT))
