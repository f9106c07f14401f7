"""Files written whole or not at all: atomic writes (temporary file, fsync, rename) and
atomic folders; which process writes (the main one) and whether a claiming process lives.
Every module that writes a file a reader may see half of goes through here."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (see write_text)."""
    write_text(path, json.dumps(data, indent=2, default=str))


def write_text(path: Path, text: str) -> None:
    """Write via a temporary file + fsync + rename, so readers never see half a file."""
    _atomic(Path(path), lambda f: f.write(text.encode("utf-8")))


def _atomic(path: Path, write, fault_point: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if fault_point:
            from tunelab.guard import fault

            fault(fault_point)  # the kill tests: written, not yet in place
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(dest: Path):
    """Yield a temporary folder next to ``dest``; on success it is renamed to ``dest`` (which
    must be absent or empty), on any error removed: ``dest`` is whole or absent. Temporary
    folders that killed writers left (named after their pid) are removed first."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for left in dest.parent.glob(f".{dest.name}.*.tmp"):
        pid = left.name[len(dest.name) + 2 : -4]
        if pid.isdigit() and not alive(f"{pid}@{socket.gethostname()}"):
            shutil.rmtree(left, ignore_errors=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists():
            dest.rmdir()  # empty (checked by the caller): replaced by the finished folder
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def alive(owner: str) -> bool:
    """Whether the pid@host that claimed a folder still runs (another host: assume so)."""
    pid, _, host = owner.partition("@")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def is_main() -> bool:
    """The main process (rank 0 under torchrun / accelerate launch; a single process)."""
    return int(os.environ.get("RANK", "0")) == 0
