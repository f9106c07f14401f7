"""Run several methods (and seeds) on the same data and budget; tabulate from run records."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import RunConfig, for_method
from tunelab.errors import RunFailed, TunelabError
from tunelab.files import write_text
from tunelab.methods import METHODS
from tunelab.planning.trace import refuse_early_all
from tunelab.report.render import csv_table, markdown_table
from tunelab.report.summary import Analysis, analyse
from tunelab.results import (
    RunRecord,
    Tuning,
    TuningSummary,
    load_records,
    read_record,
)
from tunelab.rundir import RunClaimed, run_dir_for
from tunelab.train import run


def parse_methods(text: str) -> list[str]:
    """'full,lora' -> ['full', 'lora']; 'all' -> every method."""
    if text.strip().lower() == "all":
        return list(METHODS)
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise TunelabError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose "
            f"from: {', '.join(METHODS)}"
        )
    return names


def parse_sizes(text: str) -> list[int | None]:
    """'100,300,1000,all' -> [100, 300, 1000, None] (None: the whole training set)."""
    sizes: list[int | None] = []
    for part in (x.strip().lower() for x in text.split(",") if x.strip()):
        if part == "all":
            sizes.append(None)
        elif part.isdigit() and int(part) > 0:
            sizes.append(int(part))
        else:
            raise TunelabError(
                f"--train-sizes: {part!r} is not a positive count or 'all' "
                f"(e.g. --train-sizes 100,300,1000,all)"
            )
    if not sizes:
        raise TunelabError("--train-sizes is empty; e.g. --train-sizes 100,300,1000,all")
    return sorted(set(sizes), key=lambda n: math.inf if n is None else n)


def clip_sizes(sizes: list[int | None], n_train: int) -> tuple[list[int | None], list[int]]:
    """Sizes a training set of ``n_train`` examples can give (a count at or above it would
    repeat the whole set as a second, identical point): (kept, dropped)."""
    dropped = [n for n in sizes if n is not None and n >= n_train]
    kept = [n for n in sizes if n is None or n < n_train]
    if dropped and None not in kept:
        kept.append(None)
    return kept, dropped


def sizes_for(base: RunConfig, sizes: list[int | None]) -> list[int | None]:
    """The training-set sizes to compare at, for ``base``'s data: counts at or above its
    training set run as 'all' (said on stdout)."""
    from tunelab.data import load_splits

    whole = dataclasses.replace(base.data, max_train_examples=None)
    n_train = len(load_splits(whole).train)
    sizes, dropped = clip_sizes(sizes, n_train)
    if dropped:
        print(f"--train-sizes: {dropped} >= the {n_train:,} training examples: run as 'all'")
    return sizes


@dataclass
class Request:
    """What a comparison runs: every method x training-set size x seed on ``base``'s data
    and budget, at each method's defaults or (``tuned``) at its best parameters from tune."""

    base: RunConfig
    methods: list[str]
    seeds: int = 1
    sizes: list[int | None] | None = None
    """Training-set sizes (None: all); unset = base's data.max_train_examples only."""
    tuned: TuningSummary | None = None
    overwrite: bool = False
    resume: bool = False


def runs_once(tuned: TuningSummary | None, method: str) -> bool:
    """Whether a tuned comparison runs ``method`` once instead of over every seed: the race
    stopped it (outside noise of the leader) or none of its trials finished."""
    found = tuned.methods.get(method) if tuned else None
    return bool(found and (found.stopped or found.best_value is None))


def run_configs(req: Request) -> list[RunConfig]:
    """One config per method, training-set size and seed: everything else shared, so the
    budget is the same. ``train.lr`` is not forced on all methods unless the user set it (LoRA
    and prompt tuning need far larger rates than full fine-tuning); with ``tuned``, each
    method gets its own best parameters from ``tune`` and a method the race stopped (outside
    noise of the leader) or whose trials all failed runs once: the seeds go to the finalists;
    with ``sizes``, each run trains on the first n examples of the same shuffled training
    set (nested subsets; validation and test unchanged) in a folder named
    <method>-n<size>-seed<seed>. Every method's knobs are checked here, before the first run
    starts."""
    base, tuned, sizes, seeds = req.base, req.tuned, req.sizes, req.seeds
    if seeds < 1:
        raise TunelabError(f"--seeds must be at least 1, got {seeds}")
    configs = []
    for method in req.methods:
        found = tuned.methods.get(method) if tuned else None
        params = found.best_params if found else {}
        n_seeds = 1 if runs_once(tuned, method) else seeds
        for size in sizes or [base.data.max_train_examples]:
            for seed in range(base.train.seed, base.train.seed + n_seeds):
                top = {}
                if sizes:
                    task = "" if base.task == "classification" else f"-{base.task}"
                    top["name"] = f"{method}{task}-n{size or 'all'}-seed{seed}"
                cfg = for_method(base, method, {**params, "train.seed": seed}, **top)
                cfg.data.max_train_examples = size
                configs.append(cfg)
    failed = {m for m, t in (tuned.methods if tuned else {}).items() if t.best_value is None}
    refuse_early_all(base, [m for m in req.methods if m not in failed])  # said at once (a
    # method whose every trial failed still runs once: its failure recorded in the report)
    return configs


def compare(req: Request, on_run: Callable[[RunRecord], None] | None = None) -> list[RunRecord]:
    """Run the request's runs into ``base.out_dir`` (``on_run`` after each); a failed run is
    recorded and the others go on."""
    records, tuned = [], req.tuned
    for cfg in run_configs(req):
        tag = None
        if tuned and cfg.method_name in tuned.methods:
            params = tuned.methods[cfg.method_name].best_params
            tag = Tuning(trials=req.base.tune.trials, params=params)
        try:
            rec = run(cfg, overwrite=req.overwrite, resume=req.resume, tuning=tag)
        except RunClaimed as e:  # another compare on the same folder runs it: leave it
            print(f"  skipped: {e}", flush=True)
            continue
        except RunFailed as e:  # recorded on disk; the other methods still run
            run_dir = run_dir_for(cfg)
            rec = read_record(run_dir) or RunRecord.start(run_dir, cfg.method_name, cfg)
            rec.fail(rec.reason or str(e), rec.steps, rec.curve)
        records.append(rec)
        if on_run:
            on_run(rec)
    return records


def summarize(root: Path) -> tuple[str, Analysis]:
    """Analyse every run record under ``root``; write comparison.md / comparison.csv there."""
    records = load_records(root)
    if not records:
        raise TunelabError(f"no run records (result.json) under {str(root)!r}")
    a = analyse(records)
    md = markdown_table(a) if a.rows else "no successful runs"
    if a.failed:
        md += "\n\nFailed or stopped runs:\n" + "\n".join(f"- {f}" for f in a.failed)
    write_text(Path(root) / "comparison.md", md + "\n")
    write_text(Path(root) / "comparison.csv", csv_table(a))
    return md, a
