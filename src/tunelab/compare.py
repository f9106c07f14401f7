"""Run several methods (and seeds) on the same data and budget; tabulate from run records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tunelab.config import RunConfig, for_method
from tunelab.errors import RunFailed, TunelabError
from tunelab.methods import METHODS, build_method
from tunelab.report.analysis import Analysis, analyse
from tunelab.report.render import csv_table, markdown_table
from tunelab.results import RunRecord, load_records, read_record, run_dir_for, write_text
from tunelab.train import run


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise TunelabError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose "
            f"from: {', '.join(METHODS)}"
        )
    return names


def run_configs(
    base: RunConfig, methods: list[str], seeds: int, tuned: dict[str, dict] | None = None
) -> list[RunConfig]:
    """One config per method and seed: everything but the method and the seed shared, so the
    budget is the same. ``train.lr`` is not forced on all methods unless the user set it (LoRA
    and prompt tuning need far larger rates than full fine-tuning); with ``tuned``, each
    method gets its own best parameters from ``tune``. Every method's knobs are checked
    here, before the first run starts."""
    if seeds < 1:
        raise TunelabError(f"--seeds must be at least 1, got {seeds}")
    configs = []
    for method in methods:
        params = (tuned or {}).get(method, {}).get("best_params", {})
        for seed in range(base.train.seed, base.train.seed + seeds):
            cfg = for_method(base, method, {**params, "train.seed": seed})
            build_method(cfg.method)
            configs.append(cfg)
    return configs


def compare(
    base: RunConfig,
    methods: list[str],
    seeds: int,
    overwrite: bool = False,
    resume: bool = False,
    on_run: Callable[[RunRecord], None] | None = None,
    tuned: dict[str, dict] | None = None,
) -> list[RunRecord]:
    """Run every method for ``seeds`` seeds into ``base.out_dir``: at its own defaults, or at
    its best parameters found by ``tune`` (``tuned``: method -> tune's summary)."""
    records = []
    for cfg in run_configs(base, methods, seeds, tuned):
        tag = None
        if tuned and cfg.method_name in tuned:
            tag = {"trials": base.tune.trials, "params": tuned[cfg.method_name]["best_params"]}
        try:
            rec = run(cfg, overwrite=overwrite, resume=resume, tuning=tag)
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
