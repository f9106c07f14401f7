"""The comparison computed once from the run records: the table, the floors, the verdicts,
the recommendation, the tuning and (runs at several training-set sizes) the size study.
``render`` shows it; ``compare`` prints its table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.report import sizes
from tunelab.report.analysis import (
    Column,
    Row,
    baselines,
    columns_for,
    failed_lines,
    majority,
    overfit_flags,
    summarize_methods,
    trial_leaders,
    tuned_caption,
    tuning_points,
)
from tunelab.report.stats import Estimate
from tunelab.report.verdicts import recommendation, trial_verdicts, tuning_only, verdicts
from tunelab.results import RunRecord, TuningSummary


@dataclass
class Analysis:
    """Everything the report says, computed once from the records."""

    rows: list[Row]
    columns: list[Column]
    baselines: dict[str, dict[str, Estimate]]
    caption: str
    tuning: TuningSummary | None  # what `tunelab tune` found (None when nothing was tuned)
    points: dict[str, list[dict]]  # tuning trials per method (tuning_points)
    floor: dict[str, Estimate] | None
    verdicts: list[str]
    recommendation: str
    failed: list[str]
    flags: dict[str, list[int]]  # run name -> steps flagged as overfitting
    sizes: Any = None  # report.sizes.Sizes when the runs span several training-set sizes

    @property
    def flagged(self) -> list[str]:
        return [f"{name}: from step {steps[0]}" for name, steps in self.flags.items() if steps]


def analyse(records: list[RunRecord], tuning: TuningSummary | None = None) -> Analysis:
    """The comparison of the runs, and the tuning of the trials (records tagged by tune)."""
    study = sizes.analyse_sizes(records)  # several training-set sizes: the article's table
    if study:
        records = sizes.largest(records)  # and the main comparison at the largest size
    trials = [r for r in records if r.is_trial]
    records = [r for r in records if not r.is_trial]
    rows = summarize_methods(records)
    floor = majority(records)
    verdict_lines, advice = verdicts(rows, floor), recommendation(rows)
    if trials and not records:  # a tune-only folder: what the trials show, on validation
        verdict_lines = trial_verdicts(trial_leaders(trials))
        advice = tuning_only(str(Path(trials[0].config.out_dir).parent.parent))
    return Analysis(
        rows=rows,
        columns=columns_for(records),
        baselines=baselines(records),
        caption=tuned_caption(records),
        tuning=tuning,
        points=tuning_points(trials, tuning.metric if tuning else "accuracy"),
        floor=floor,
        verdicts=verdict_lines,
        recommendation=advice,
        failed=failed_lines(records),
        flags={r.name: overfit_flags(r) for r in records if r.ok},
        sizes=study,
    )
