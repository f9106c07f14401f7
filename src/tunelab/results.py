"""Everything a run leaves on disk, defined once: the run record (``result.json``), the run
folder, the metrics rows (``metrics.jsonl``) and the resumable checkpoint (``state.pt``).

The record is one dataclass, ``RunRecord``: train fills it (``start`` -> ``fail`` / ``stop`` /
``finish``), and compare, report, cli and bench read its fields. Every file is written
atomically (temporary file, fsync, rename), so a reader never sees half of one."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, config_from_dict, public_dict
from tunelab.errors import ConfigError, TunelabError
from tunelab.files import is_main, write_json, write_text
from tunelab.forgetting import Forgetting

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
    active: int = 0  # a token's parameters (mixture of experts: < total); 0: older records


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
    """CPU time every other process on the machine used meanwhile (/proc/stat, + steal)."""
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
class Scores:
    """Quality of a model on one split: the mean loss always; accuracy and macro-F1 where
    there are labels to predict; perplexity for a language model's own text (instruction
    data). A task's ``metrics`` returns some of these names; ``evaluate`` adds the loss."""

    loss: float | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    perplexity: float | None = None
    correct: str | None = None  # test only: per example in the split's order, 1 right 0 wrong

    @classmethod
    def of(cls, values: dict[str, float]) -> Scores:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; a task reports {sorted(known)}")
        return cls(**values)

    def value(self, metric: str) -> float:
        """The named metric (train.metric, tune's objective); NaN where it was not measured."""
        v = getattr(self, metric)
        return math.nan if v is None else v

    def as_dict(self) -> dict[str, float]:
        """The measured metrics (as result.json and the metric rows hold them)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


VALIDATION = "val_"  # prefix of the validation metrics in a metrics row (val_loss, ...)


def validation_row(scores: Scores) -> dict[str, float]:
    """A validation's metrics as the metrics rows and the curve name them."""
    return {f"{VALIDATION}{k}": v for k, v in scores.as_dict().items()}


def validation_of(row: dict) -> dict[str, float]:
    """The validation metrics of a metrics row, by their own names (loss, accuracy, ...)."""
    return {k[len(VALIDATION) :]: v for k, v in row.items() if k.startswith(VALIDATION)}


@dataclass
class Tuning:
    """How a run relates to tuning: a trial of the study of ``study`` (its ``trial`` number),
    or a run of a tuned configuration (``trials`` per method behind it); ``params``: the
    dotted parameters it ran with (e.g. {"train.lr": 3e-4, "method.r": 16})."""

    study: str = ""
    trial: int = -1
    trials: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def is_trial(self) -> bool:
        return bool(self.study)


@dataclass
class TrialCounts:
    complete: int = 0
    pruned: int = 0
    fail: int = 0


@dataclass
class MethodTuning:
    """One method's study: its space, trials, best parameters and value, what it cost."""

    space: dict[str, list] = field(default_factory=dict)
    trials: TrialCounts = field(default_factory=TrialCounts)
    best_params: dict[str, Any] = field(default_factory=dict)
    best_value: float | None = None
    best_trial: int | None = None
    examples: int = 0
    seconds: float = 0.0
    importances: dict[str, float] = field(default_factory=dict)
    stopped: str = ""  # why the race stopped giving this method trials ("" if it ran them all)
    rungs: list[int] = field(default_factory=list)  # halving: its trials that reached each rung
    front: list[dict] = field(default_factory=list)
    """Tuned against forgetting: the Pareto front of validation and forgetting (tradeoff)."""


@dataclass
class TuningSummary:
    """What `tunelab tune` found (OUT/tuning.json): the budget every method had and each
    method's study."""

    trials_per_method: int = 0
    evals: int = 0
    eval_examples: int | None = None
    pruner: str = "hyperband"
    metric: str = "accuracy"
    methods: dict[str, MethodTuning] = field(default_factory=dict)
    rungs: list[int] = field(default_factory=list)  # halving: validations compared at: [1, 3, 9]
    eta: int = 0  # halving: the reduction factor between rungs
    forgetting: str = ""  # how tuning used forgetting: "", "objective", "limit 0.05", both
    forgetting_limit: float | None = None

    def write(self, root: Path) -> None:
        write_json(Path(root) / TUNING, dataclasses.asdict(self))

    @classmethod
    def read(cls, root: Path) -> TuningSummary | None:
        """OUT/tuning.json (None if there is none; a corrupt one is skipped, said)."""
        path = Path(root) / TUNING
        if not path.exists():
            return None
        try:
            return cls(**_build(cls, json.loads(path.read_text(encoding="utf-8"))))
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            print(f"tunelab: warning: skipping {path}: {str(e)[:200]}", file=sys.stderr)
            return None


TUNING = "tuning.json"


@dataclass
class Env:
    """Where a run ran: versions, device, threads, precision and the weights' dtypes."""

    packages: dict[str, str | None] = field(default_factory=dict)
    python: str = ""
    device: str = ""
    gpu: str | None = None
    cpu: str = ""
    cpu_count: int | None = None
    torch_threads: int = 0
    git_commit: str | None = None
    precision: str = ""  # accelerate's mixed precision: no, bf16 or fp16
    weights: str = ""
    """dtype of the weights that train (float32: master weights; bf16 runs via autocast)."""
    parallel: str = ""  # "ddp x2", "fsdp x4"; "" for one process


@dataclass
class DataInfo:
    dataset: str = ""
    labels: list[str] = field(default_factory=list)
    train: int = 0
    validation: int = 0
    test: int = 0
    majority: dict[str, Scores] = field(default_factory=dict)
    """Metrics of always predicting the training set's most frequent label, per split
    ("validation", "test"): the floor a run must beat to count as having learned."""
    zero_shot: dict[str, Scores] = field(default_factory=dict)
    """A decoder's metrics before any training (label-word scoring), per split: the
    baseline every decoder method must beat."""
    template: str = ""  # a decoder's prompt template as the run used it


@dataclass
class RunRecord:
    """One run: its config, what it cost and what it achieved (``result.json``)."""

    name: str
    method: str
    config: RunConfig
    """The run's configuration (result.json holds it with secrets redacted)."""
    status: str = "running"  # running | ok | failed | interrupted | pruned | paused
    reason: str = ""
    schema: int = SCHEMA
    method_knobs: dict[str, Any] = field(default_factory=dict)
    lr: float = 0.0
    params: Params = field(default_factory=Params)
    flops_per_token: Flops = field(default_factory=Flops)
    fast_cpu: dict[str, int] = field(default_factory=dict)
    data: DataInfo = field(default_factory=DataInfo)
    env: Env = field(default_factory=Env)
    stopped_early: bool = False
    steps: int = 0
    epochs: float = 0.0
    timing: Timing = field(default_factory=Timing)
    memory: Memory = field(default_factory=Memory)
    flops: TrainFlops = field(default_factory=TrainFlops)
    saved_bytes: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    trend: list[dict[str, float]] = field(default_factory=list)  # probe points (tunelab.trend)
    best_step: int = -1
    best_validation: Scores | None = None
    test: Scores | None = None  # None: not tested (a trial, train.test=false, unfinished)
    forgetting: Forgetting | None = None  # the general-text loss change (tunelab.forgetting)
    tuning: Tuning | None = None  # set for a tuning trial and a tuned configuration's run
    # read back with the record, never written into result.json
    metrics: list[dict] = field(default_factory=list, repr=False, metadata={"disk": False})
    run_dir: str = field(default="", repr=False, metadata={"disk": False})

    @classmethod
    def start(cls, run_dir: Path, method: str, cfg: RunConfig, **fields: Any) -> RunRecord:
        return cls(name=Path(run_dir).name, method=method, config=cfg, **fields)

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

    @property
    def is_trial(self) -> bool:
        """A tuning trial (its validation chose a configuration; it is never tested)."""
        return self.tuning is not None and self.tuning.is_trial

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
        d = {**d, "schema": SCHEMA, "config": config_from_dict(d.get("config") or {})}
        for key in ("best_validation", "test", "tuning"):
            d[key] = d.get(key) or None  # {} in records before typed sections: none
        return cls(**_build(cls, d))

    def write(self, run_dir: Path) -> None:
        """result.json, atomically; by the main process only (several processes share a run)."""
        if is_main():
            write_json(Path(run_dir) / RESULT, self.to_dict())


def _plain(value: Any) -> Any:
    if isinstance(value, RunConfig):
        return public_dict(value)
    if isinstance(value, Scores):
        return value.as_dict()
    if isinstance(value, DataInfo):
        per_split = {"majority": value.majority, "zero_shot": value.zero_shot}
        return {**dataclasses.asdict(value), **{
            k: {split: sc.as_dict() for split, sc in v.items()} for k, v in per_split.items()
        }}  # fmt: skip
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _build(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls`` from a dict: nested dataclasses built, unknown
    keys (from a newer minor version) ignored."""
    import types
    import typing

    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        tp, value = hints[f.name], d[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        args = typing.get_args(tp)
        if typing.get_origin(tp) is dict and dataclasses.is_dataclass(args[1]):  # per split
            value = {k: args[1](**_build(args[1], v)) for k, v in value.items()}
        elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = tp(**_build(tp, value))
        out[f.name] = value
    return out


# ---------------------------------------------------------------- files


def read_record(run_dir: Path) -> RunRecord | None:
    """The run record of a folder, None if it has none; a corrupt one raises TunelabError."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return None
    try:
        rec = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, UnicodeDecodeError, ConfigError) as e:
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
