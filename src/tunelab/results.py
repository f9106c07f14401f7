"""Everything a run leaves on disk, defined once: the run record (``result.json``), the run
folder, the metrics rows (``metrics.jsonl``) and the resumable checkpoint (``state.pt``).

The record is one dataclass, ``RunRecord``: train fills it (``start`` -> ``fail`` / ``stop`` /
``finish``), and compare, report, cli and bench read its fields. Every file is written
atomically (temporary file, fsync, rename), so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from tunelab.anatomy import unwrap
from tunelab.config import RunConfig, check_run_name, public_dict
from tunelab.errors import RunFailed, TunelabError

RESULT = "result.json"
METRICS = "metrics.jsonl"
STATE = "state.pt"  # resumable training state, removed when the run finishes
ERROR = "error.txt"  # the traceback of the error that ended a failed run
SCHEMA = 2  # 1: records before the schema field (same layout, no data.majority)


@dataclass
class Params:
    trainable: int = 0
    total: int = 0
    trainable_pct: float = 0.0


@dataclass
class Timing:
    train_s: float = 0.0
    eval_s: float = 0.0
    test_s: float = 0.0
    examples_per_s: float = 0.0
    tokens_per_s: float = 0.0
    train_examples_seen: int = 0
    train_tokens_seen: int = 0
    cpu_s: float = 0.0
    """This process's CPU time (all threads) during the training steps."""
    other_cpu_s: float = 0.0
    """CPU time every other process on the machine used meanwhile (/proc/stat, steal
    included)."""
    threads: int = 0
    """CPU threads torch computed with (0: trained on a GPU, or not measured)."""
    cores: int = 0
    """CPUs of the machine as /proc/stat counts them (0: not readable here)."""

    @classmethod
    def of(
        cls, train_s: float, eval_s: float, test_s: float, examples: int, tokens: int,
        cpu: tuple[float, float, int, int] = (0.0, 0.0, 0, 0),
    ):  # fmt: skip
        """``cpu``: (cpu_s, other_cpu_s, threads, cores)."""
        seconds = max(train_s, 1e-9)
        per_s = (examples / seconds, tokens / seconds)
        return cls(train_s, eval_s, test_s, *per_s, examples, tokens, *cpu)

    @property
    def others_load(self) -> float:
        """Cores other processes kept busy on average while this run trained."""
        return self.other_cpu_s / self.train_s if self.train_s > 0 else 0.0

    @property
    def contended(self) -> bool:
        """True when other processes took more than the cores this run left free plus a
        quarter of the ones it computed on: its times then say little about the method."""
        if not self.threads or not self.cores:
            return False
        spare = max(self.cores - self.threads, 0)
        return self.others_load > spare + CONTENDED_SHARE * self.threads


# A run alone on its machine leaves the others' load near 0 (measured here: under 0.05 cores
# for tunelab's own runs on 2 cores); another training job sharing the cores takes about one.
CONTENDED_SHARE = 0.25


@dataclass
class Memory:
    peak_bytes: int = 0
    """Training-step peak: CUDA max allocated, or CPU RSS above the level before the model."""
    process_peak_bytes: int = 0
    kind: str = ""


@dataclass
class Flops:
    forward: int = 0
    backward: int = 0
    total: int = 0
    """Per real token (see measure.flops_per_token)."""


@dataclass
class TrainFlops:
    train_total: float = 0.0
    per_s: float = 0.0


@dataclass
class DataInfo:
    dataset: str = ""
    labels: list[str] = field(default_factory=list)
    train: int = 0
    validation: int = 0
    test: int = 0
    majority: dict[str, dict[str, float]] = field(default_factory=dict)
    """Metrics of always predicting the training set's most frequent label, per split
    ("validation", "test"): the floor a run must beat to count as having learned."""
    zero_shot: dict[str, dict[str, float]] = field(default_factory=dict)
    """A decoder's metrics before any training (label-word scoring), per split: the
    baseline every decoder method must beat."""


@dataclass
class RunRecord:
    """One run: its config, what it cost and what it achieved (``result.json``)."""

    name: str
    method: str
    config: dict[str, Any]
    status: str = "running"  # running | ok | failed | interrupted | pruned
    reason: str = ""
    schema: int = SCHEMA
    method_knobs: dict[str, Any] = field(default_factory=dict)
    lr: float = 0.0
    params: Params = field(default_factory=Params)
    flops_per_token: Flops = field(default_factory=Flops)
    fast_cpu: dict[str, int] = field(default_factory=dict)
    data: DataInfo = field(default_factory=DataInfo)
    env: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    steps: int = 0
    epochs: float = 0.0
    timing: Timing = field(default_factory=Timing)
    memory: Memory = field(default_factory=Memory)
    flops: TrainFlops = field(default_factory=TrainFlops)
    saved_bytes: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    best_step: int = -1
    best_validation: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    """A tuning trial: {study, trial, params}; a run of a tuned configuration: {trials, params}."""
    # read back with the record, never written into result.json
    metrics: list[dict] = field(default_factory=list, repr=False, metadata={"disk": False})
    run_dir: str = field(default="", repr=False, metadata={"disk": False})

    @classmethod
    def start(cls, run_dir: Path, method: str, cfg: RunConfig, **fields: Any) -> RunRecord:
        return cls(name=Path(run_dir).name, method=method, config=public_dict(cfg), **fields)

    def fail(self, reason: str, steps: int = 0, curve: list | None = None) -> RunRecord:
        self.status, self.reason, self.steps = "failed", reason, steps
        self.curve = list(curve or [])
        return self

    def stop(self, status: str, reason: str, steps: int, curve: list) -> RunRecord:
        """Interrupted or pruned: what ran is kept, ``--resume`` goes on where it can."""
        self.status, self.reason, self.steps, self.curve = status, reason, steps, list(curve)
        return self

    def finish(self, **fields: Any) -> RunRecord:
        """Status ok, the given fields, and the training FLOPs derived from them."""
        for key, value in fields.items():
            setattr(self, key, value)
        tokens, seconds = self.timing.train_tokens_seen, max(self.timing.train_s, 1e-9)
        total = self.flops_per_token.total * tokens
        self.flops = TrainFlops(train_total=total, per_s=total / seconds)
        self.status = "ok"
        return self

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.metadata.get("disk", True)
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """Read a record of this schema or an older one (missing fields get defaults)."""
        if not isinstance(d, dict) or not {"name", "method", "status"} <= d.keys():
            raise ValueError("not a run record (needs name, method and status)")
        if d.get("schema", 1) > SCHEMA:
            raise ValueError(f"schema {d['schema']} is newer than this tunelab ({SCHEMA})")
        d = {**d, "schema": SCHEMA, "config": d.get("config", {})}
        return cls(**_build(cls, d))

    def write(self, run_dir: Path) -> None:
        """result.json, atomically; by the main process only (several processes share a run)."""
        if is_main():
            write_json(Path(run_dir) / RESULT, self.to_dict())


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _build(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls`` from a dict: nested dataclasses built, unknown
    keys (from a newer minor version) ignored."""
    import typing

    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        tp, value = hints[f.name], d[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = tp(**_build(tp, value))
        out[f.name] = value
    return out


# ---------------------------------------------------------------- files


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


def read_record(run_dir: Path) -> RunRecord | None:
    """The run record of a folder, None if it has none; a corrupt one raises TunelabError."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return None
    try:
        rec = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise TunelabError(f"{path} is not a readable run record: {str(e)[:200]}") from None
    rec.run_dir = str(run_dir)
    return rec


def find_runs(root: Path) -> list[Path]:
    """Run folders under ``root`` (any folder holding a result.json), sorted by name."""
    return sorted(p.parent for p in Path(root).rglob(RESULT))


def load_records(root: Path) -> list[RunRecord]:
    """Every readable run record under ``root`` with its metrics rows; corrupt records are
    skipped with a warning that names the file."""
    records = []
    for d in find_runs(root):
        try:
            rec = read_record(d)
        except TunelabError as e:
            print(f"tunelab: warning: skipping {e}", file=sys.stderr)
            continue
        if rec is not None:
            rec.metrics = read_metrics(d)
            records.append(rec)
    return records


def append_metrics(run_dir: Path, row: dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    """Rows of metrics.jsonl; a line cut short by a crash is skipped."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep rows up to ``step`` (a resumed run logs the later ones again)."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    write_text(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


# ---------------------------------------------------------------- run folder


def run_dir_for(cfg: RunConfig) -> Path:
    """OUT/<name>, default <method>-seed<seed> (<method>-<task>-seed<seed> for a task other
    than classification, so encoder and decoder runs can share one comparison folder)."""
    task = "" if cfg.task == "classification" else f"-{cfg.task}"
    name = cfg.name or f"{cfg.method_name}{task}-seed{cfg.train.seed}"
    check_run_name(name)  # a method name comes from the user too: one folder inside out_dir
    return Path(cfg.out_dir) / name


CLAIM = ".claim"  # pid@host of the process running the folder; removed when it stops


class RunClaimed(TunelabError):
    """Another live process is running this run folder."""


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


def _claim(run_dir: Path) -> None:
    """Take the folder for this process, atomically (O_EXCL): two processes pointed at one
    output folder never run the same run. A claim left by a dead process is taken over."""
    path = run_dir / CLAIM
    me = f"{os.getpid()}@{socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = path.read_text().strip() if path.exists() else ""
            if owner and alive(owner) and owner != me:
                raise RunClaimed(f"run {run_dir.name} is being run by process {owner}") from None
            path.unlink(missing_ok=True)  # its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return
    raise RunClaimed(f"run {run_dir.name}: could not claim {path}")


def release_run_dir(run_dir: Path) -> None:
    """Give the folder back (the claim file of this process only)."""
    path = Path(run_dir) / CLAIM
    me = f"{os.getpid()}@{socket.gethostname()}"
    try:
        if path.read_text().strip() == me:
            path.unlink()
    except OSError:
        pass


def claim_run_dir(run_dir: Path, overwrite: bool, resume: bool, cfg: RunConfig) -> None:
    """Claim the folder for this process; refuse to clobber a run unless told to overwrite;
    resume keeps it. Writes the config (secrets redacted) to config.yaml."""
    if not is_main():
        return  # the main process of a multi-process run owns the folder
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _claim(run_dir)
    except OSError as e:
        raise TunelabError(
            f"cannot write the run folder {str(run_dir)!r}: {e.strerror or e}; choose an output "
            f"folder you can write to (--out / out_dir)"
        ) from None
    try:
        _check_existing(run_dir, overwrite, resume)
    except BaseException:
        release_run_dir(run_dir)
        raise
    for left in run_dir.glob(".*.tmp"):  # half-written files of a killed process (ours now)
        shutil.rmtree(left) if left.is_dir() else left.unlink()
    write_text(run_dir / "config.yaml", yaml.safe_dump(public_dict(cfg), sort_keys=False))


def is_main() -> bool:
    """The main process (rank 0 under torchrun / accelerate launch; a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def _check_existing(run_dir: Path, overwrite: bool, resume: bool) -> None:
    if (run_dir / RESULT).exists() or (run_dir / STATE).exists():
        if resume and (run_dir / STATE).exists():
            (run_dir / RESULT).unlink(missing_ok=True)  # an "interrupted" record goes on
        elif overwrite or _failed_without_progress(run_dir):
            for item in run_dir.iterdir():
                if item.name != CLAIM:
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


def first_line(error: BaseException, limit: int = 300) -> str:
    """The error's type and first line: what a one-line message can say of it."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit] if lines else ''}".rstrip(": ")


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


# ---------------------------------------------------------------- checkpoint


def save_model(model, tokenizer, folder: Path) -> None:
    """Standard formats: PEFT adapter (+ the base config with labels) or a full HF model;
    written to a temporary folder renamed into place, so ``folder`` is whole or absent."""
    from tunelab.guard import fault

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    base = unwrap(model)
    base.config.save_pretrained(tmp)  # id2label + num_labels for loading the adapter back
    tokenizer.save_pretrained(tmp)
    fault("final-save")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters (all a frozen-backbone method changes)."""
    return {
        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
    }


def load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def save_checkpoint(
    run_dir: Path, model, optimizer, scheduler, progress: dict, best: dict[str, torch.Tensor]
) -> None:
    """The full training state, atomically: weights that train, optimizer, scheduler,
    progress, the best validation's weights and the RNG streams."""
    state = {
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "best_state": best,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    _atomic(Path(run_dir) / STATE, lambda f: torch.save(state, f), fault_point="checkpoint")


def load_checkpoint(run_dir: Path, model, optimizer, scheduler) -> tuple[dict, dict]:
    """Restore what ``save_checkpoint`` wrote; return (progress, best weights)."""
    # weights_only: tensors and plain containers only; a pickle planted in a shared runs
    # folder cannot run code here
    path = Path(run_dir) / STATE
    try:
        st = torch.load(path, weights_only=True)
    except Exception as e:
        raise TunelabError(
            f"cannot read the checkpoint {path}: {first_line(e)}; it is left as it is: to keep "
            f"it, move it out of the folder (mv {path} {path}.bad) and run without --resume; "
            f"to discard it and start over, run again with --overwrite"
        ) from e
    load_trainable(model, st["trainable"])
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    torch.set_rng_state(st["rng"])
    if st.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda_rng"])
    return st["progress"], st["best_state"]
