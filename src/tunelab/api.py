"""tunelab from Python (a notebook, a script): the commands as functions, same arguments.

    import tunelab
    cmp = tunelab.compare("full,lora", model="minilm", out="runs", epochs=1)
    cmp.table            # the comparison table as a pandas DataFrame
    cmp                  # in Jupyter: the report, inline

A command's flags are keyword arguments (``model=``, ``dataset=``, ``epochs=``, ``out=``,
...); dotted config keys are ``"key=value"`` strings, as on the command line, or a dict
(``set={"train.lr": 3e-4}``); ``config=`` is a YAML file. Each function returns the typed
records the command prints: a ``RunRecord``, a ``Comparison``, a ``TuningSummary``, a
``Plan``. Errors are ``TunelabError``s with the same one-line messages. The ``tunelab``
command is a thin layer over these functions.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

FLAGS = {  # keyword arguments -> dotted config keys (the commands' convenience flags)
    "model": "model.name",
    "dataset": "data.dataset",
    "text_column": "data.text_column",
    "text_pair_column": "data.text_pair_column",
    "label_column": "data.label_column",
    "max_train_examples": "data.max_train_examples",
    "epochs": "train.epochs",
    "task": "task",
    "out": "out_dir",
    "tracker": "tracker",
    "batch_size": "train.batch_size",
    "max_length": "data.max_length",
    "precision": "train.mixed_precision",
    "trials": "tune.trials",
    "storage": "tune.storage",
    "space": "tune.shared",
}


def load(
    overrides: Iterable[str] = (), config: str | None = None, set: dict | None = None, **flags
):
    """The run configuration the commands build: defaults, then the YAML file ``config``,
    then the flags and the dotted overrides; checked (a bad key or value is one line)."""
    from tunelab.config import load_config
    from tunelab.tasks import check_task

    unknown = sorted(k for k, v in flags.items() if k not in FLAGS and v is not None)
    if unknown:
        raise TunelabError(
            f"unknown argument(s) {unknown}; the flags are {sorted(FLAGS)}, and any config key "
            f"goes in as 'key=value' or set={{...}} (every key: `tunelab config`)"
        )
    out = [str(o) for o in overrides]
    if out and out[0].endswith((".yaml", ".yml")) and "=" not in out[0]:
        config = out.pop(0)
    for flag, value in flags.items():
        if value is None:
            continue
        if flag == "precision" and value == "fp32":
            value = "no"
        if flag == "space":
            value = f"[{value if isinstance(value, str) else ','.join(value)}]"
        out.append(f"{FLAGS[flag]}={value}")
    out += [f"{k}={v}" for k, v in (set or {}).items()]
    cfg = load_config(config, out)
    check_task(cfg)
    return cfg


def _methods(methods: str | Iterable[str]) -> list[str]:
    from tunelab.comparison import parse_methods

    return parse_methods(methods if isinstance(methods, str) else ",".join(methods))


def run(*overrides: str, overwrite: bool = False, resume: bool = False, **kw):
    """Train one method (``method=lora`` or ``set={"method.name": "lora"}``): its RunRecord."""
    from tunelab.train import run as train

    return train(load(overrides, **kw), overwrite=overwrite, resume=resume)


@dataclass
class Comparison:
    """What ``compare`` produced: the records, the analysis (verdicts, recommendation), the
    table as a DataFrame and the report's paths. Shown in Jupyter as the report itself."""

    out: Path
    records: list
    analysis: Any  # report.summary.Analysis
    markdown: str
    report: Path | None = None

    @property
    def table(self):
        """The comparison table: a row per method (and baseline), each column's mean and its
        95% half-width (``<column>_ci95``), as comparison.csv holds it."""
        import io

        import pandas as pd

        from tunelab.report.render import csv_table

        return pd.read_csv(io.StringIO(csv_table(self.analysis)))

    @property
    def recommendation(self) -> str:
        return self.analysis.recommendation

    @property
    def failed(self) -> list:
        return [r for r in self.records if r.status == "failed"]

    def _repr_html_(self) -> str:
        if self.report and self.report.exists():
            page = html.escape(self.report.read_text(), quote=True)
            return f'<iframe srcdoc="{page}" style="width:100%;height:720px;border:0"></iframe>'
        return self.table.to_html() + f"<p>{html.escape(self.recommendation)}</p>"

    def __str__(self) -> str:
        return f"{self.markdown}\n\n{self.recommendation}"


def compare(
    methods: str | Iterable[str] = "full,llrd,lora,prompt",
    *overrides: str,
    seeds: int = 1,
    sizes: str | None = None,
    tune: int | None = None,
    report: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    on_run: Callable | None = None,
    **kw,
) -> Comparison:
    """``tunelab compare``: every method on the same data and budget (``seeds`` each; at
    training-set ``sizes`` like "100,1000,all"; after ``tune`` trials of tuning each), the
    table, the verdicts and (``report``) report.html. A failed run is in ``failed``."""
    from tunelab.comparison import parse_sizes

    names, tuned = _methods(methods), None
    if sizes:
        parse_sizes(sizes)  # a bad list is said before any tuning
    if tune is not None:
        trials = {"trials": tune} if tune else {}
        tuned = _tune(names, *overrides, report=False, overwrite=overwrite, **trials, **kw)
    cfg = load(overrides, **kw)
    return compare_config(cfg, names, seeds, sizes, tuned, report, overwrite, resume, on_run)


def compare_config(cfg, names, seeds=1, sizes=None, tuned=None, report=True, overwrite=False,
                   resume=False, on_run=None) -> Comparison:  # fmt: skip
    """``compare`` from a loaded configuration (what the command calls)."""
    from tunelab.comparison import Request, parse_sizes, sizes_for, summarize
    from tunelab.comparison import compare as run_all

    parsed = sizes_for(cfg, parse_sizes(sizes)) if sizes else None
    req = Request(cfg, names, seeds, parsed, tuned, overwrite, resume)
    records = run_all(req, on_run=on_run)
    md, analysis = summarize(Path(cfg.out_dir))
    html_path = build_report(cfg.out_dir)[0] if report else None
    return Comparison(Path(cfg.out_dir), records, analysis, md, html_path)


def tune(
    methods: str | Iterable[str] = "full,llrd,lora,prompt",
    *overrides: str,
    workers: int = 1,
    report: bool = True,
    overwrite: bool = False,
    **kw,
):
    """``tunelab tune``: search each method's hyperparameters; its TuningSummary."""
    return tune_config(load(overrides, **kw), _methods(methods), workers, report, overwrite)


def tune_config(cfg, names: list[str], workers=1, report=True, overwrite=False):
    """``tune`` from a loaded configuration (what the command calls)."""
    from tunelab.space import check_spaces
    from tunelab.tuning import reset
    from tunelab.tuning import tune as search

    if workers < 1:
        raise TunelabError(f"--workers must be at least 1, got {workers}")
    check_spaces(names, cfg.tune)
    if overwrite:
        reset(cfg, names)
    best = search(cfg, names, workers=workers)
    if report:
        build_report(cfg.out_dir)
    return best


_tune = tune  # compare's own ``tune`` argument hides the function inside it


def plan(
    methods: str | Iterable[str] | None = None,
    *overrides: str,
    examples: int | None = None,
    memory: str | int | None = None,
    time: str | float | None = None,
    device: str | None = None,
    calibrate: bool = False,
    processes: int = 1,
    **kw,
):
    """``tunelab plan``: memory, time and FLOPs of each method before any run; a Plan
    (``str(plan)`` is the command's table, ``plan.to_json()`` its JSON); ``processes``: one
    process's share under DDP, or FSDP with ``fsdp=True``."""
    cfg = load(overrides, **kw)
    return plan_config(cfg, methods, examples, memory, time, device, calibrate, processes)


def plan_config(cfg, methods=None, examples=None, memory=None, time=None, device=None,
                calibrate=False, processes=1):  # fmt: skip
    """``plan`` from a loaded configuration (what the command calls)."""
    from tunelab.methods import METHODS
    from tunelab.planning import parse_duration, parse_size
    from tunelab.planning import plan as estimate

    if examples is not None and examples < 1:
        raise TunelabError(f"--examples must be at least 1, got {examples}")
    if processes < 1:
        raise TunelabError(f"--processes must be at least 1, got {processes}")
    return estimate(
        cfg,
        _methods(methods or ",".join(METHODS)),
        examples=examples,
        device=device,
        memory=parse_size(memory) if isinstance(memory, str) else memory,
        seconds=parse_duration(time) if isinstance(time, str) else time,
        calibrate_rate=calibrate,
        processes=processes,
    )


def predict(run_dir: str | Path, texts: str | list[str], max_new_tokens: int = 0, device=None):
    """``tunelab predict``: a finished run's label and scores per text (a list of dicts)."""
    from tunelab.inference import predict as infer

    return infer(run_dir, [texts] if isinstance(texts, str) else list(texts), max_new_tokens,
                 device)  # fmt: skip


def export(run_dir: str | Path, out: str | Path) -> Path:
    """``tunelab export``: a plain Hugging Face model folder (adapters merged)."""
    from tunelab.inference import export as write

    return write(run_dir, out)


def build_report(runs_dir: str | Path, output: str | Path | None = None) -> tuple[Path, Path]:
    """``tunelab report``: report.html and report.md from the run records under runs_dir."""
    from tunelab.report import build_report as write

    return write(Path(runs_dir), Path(output) if output else None)
