"""Run folders: one per run, named inside --out only; claimed by the process that runs it
(two processes pointed at one folder never run the same run; a dead process's claim is taken
over); an existing run is never clobbered unless told to (--overwrite), --resume goes on."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import yaml

from tunelab.config import RunConfig, check_run_name, public_dict
from tunelab.errors import RunFailed, TunelabError, first_line
from tunelab.files import is_main, write_text
from tunelab.results import ERROR, RESULT, STATE, RunRecord, read_record


def run_dir_for(cfg: RunConfig) -> Path:
    """OUT/<name>, default <method>-seed<seed> (<method>-<task>-seed<seed> for a task other
    than classification, so encoder and decoder runs can share one comparison folder)."""
    task = "" if cfg.task == "classification" else f"-{cfg.task}"
    name = cfg.name or f"{cfg.method_name}{task}-seed{cfg.train.seed}"
    check_run_name(name)  # a method name comes from the user too: one folder inside out_dir
    return Path(cfg.out_dir) / name


CLAIM = ".claim"  # pid@host of the process running the folder; removed when it stops
LOCK = ".claim.lock"  # the kernel lock behind the claim (the empty file stays)
_HELD: dict[str, object] = {}  # folder -> this process's lock on it


class RunClaimed(TunelabError):
    """Another live process is running this run folder."""


def claim(run_dir: Path) -> None:
    """Take the folder for this process: a kernel lock (``filelock``) on a file in it, so two
    processes pointed at one output folder never run the same run, and a process that dies
    (killed, its machine rebooted) holds nothing: the kernel released its lock. The owner's
    pid@host is written beside it for messages. This process's own claim is kept (a caller
    may hold the folder around a run)."""
    from filelock import FileLock, Timeout

    key = str(Path(run_dir).resolve())
    if key in _HELD:
        return
    lock = FileLock(str(Path(run_dir) / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        owner = _owner(run_dir) or "another process"
        raise RunClaimed(f"run {run_dir.name} is being run by process {owner}") from None
    _HELD[key] = lock
    write_text(run_dir / CLAIM, f"{os.getpid()}@{socket.gethostname()}")


def _owner(run_dir: Path) -> str:
    try:
        return (run_dir / CLAIM).read_text().strip()
    except OSError:
        return ""


def release_run_dir(run_dir: Path) -> None:
    """Give the folder back (this process's claim only)."""
    lock = _HELD.pop(str(Path(run_dir).resolve()), None)
    if lock is None:
        return
    (Path(run_dir) / CLAIM).unlink(missing_ok=True)
    lock.release()


def claim_run_dir(run_dir: Path, overwrite: bool, resume: bool, cfg: RunConfig) -> RunRecord | None:
    """Claim the folder for this process; refuse to clobber a run unless told to overwrite;
    resume keeps it. Writes the config (secrets redacted) to config.yaml. With resume, a run
    another process finished while this one waited for the folder is not run again: its
    record is returned (the folder released)."""
    if not is_main():
        return None  # the main process of a multi-process run owns the folder
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        claim(run_dir)
    except OSError as e:
        raise TunelabError(
            f"cannot write the run folder {str(run_dir)!r}: {e.strerror or e}; choose an output "
            f"folder you can write to (--out / out_dir)"
        ) from None
    try:
        _check_existing(run_dir, overwrite, resume)
        done = read_record(run_dir) if resume else None
    except BaseException:
        release_run_dir(run_dir)
        raise
    if done is not None and done.ok:  # checked under the claim: finished meanwhile
        release_run_dir(run_dir)
        return done
    for left in run_dir.glob(".*.tmp"):  # half-written files of a killed process (ours now)
        shutil.rmtree(left) if left.is_dir() else left.unlink()
    write_text(run_dir / "config.yaml", yaml.safe_dump(public_dict(cfg), sort_keys=False))
    return None


def _check_existing(run_dir: Path, overwrite: bool, resume: bool) -> None:
    if (run_dir / RESULT).exists() or (run_dir / STATE).exists():
        if resume and (run_dir / STATE).exists():
            pass  # its interrupted / paused record stays until the run writes the next one
        elif overwrite or _failed_without_progress(run_dir):
            for item in run_dir.iterdir():
                if item.name not in (CLAIM, LOCK):
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
        elif not resume:
            raise TunelabError(
                f"output folder {str(run_dir)!r} already holds a run; pass "
                f"--overwrite to replace it, --resume to continue it, or pick "
                f"another --out / name"
            )


def _failed_without_progress(run_dir: Path) -> bool:
    """A run that failed with no checkpoint to keep (a typo in a column name, a crash in its
    first steps): nothing to protect, the same command simply runs it again."""
    rec = read_record(run_dir)
    return rec is not None and rec.status == "failed" and not (run_dir / STATE).exists()


OUT_OF_MEMORY = (
    "; lower train.batch_size (train.grad_accum keeps the effective batch), "
    "train.eval_batch_size or data.max_length, or set train.gradient_checkpointing=true "
    "(`tunelab plan` estimates the peak)"
)


def record_failure(record: RunRecord, run_dir: Path, error: Exception, steps: int, curve):
    """Record an error that ended a run: result.json status ``failed`` with the one-line
    reason, the full traceback in ``error.txt``; returns it as RunFailed (a comparison records
    it and goes on) chained to the original. Bad input (a TunelabError: an unknown model, a
    missing column, a corrupt checkpoint) is returned as it is, unrecorded: it is the
    command that is wrong, not the run, and the same fix applies to every run."""
    import traceback

    if isinstance(error, TunelabError):
        return error
    oom = isinstance(error, MemoryError) or "out of memory" in str(error).lower()
    reason = first_line(error) + (OUT_OF_MEMORY if oom else "")
    if is_main():
        trace = "".join(traceback.format_exception(error))
        write_text(run_dir / ERROR, trace)
        record.fail(f"{reason} (traceback: {ERROR})", steps, curve).write(run_dir)
    failed = RunFailed(f"run {run_dir.name} failed: {reason} (traceback: {run_dir / ERROR})")
    failed.__cause__ = error
    return failed
