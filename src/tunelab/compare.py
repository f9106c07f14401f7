"""Run several methods (and seeds) on the same data and budget; tabulate from run records."""

from __future__ import annotations

from pathlib import Path

from tunelab.config import RunConfig, load_config
from tunelab.errors import RunFailed, TunelabError
from tunelab.methods import METHODS
from tunelab.report import csv_table, load_runs, markdown_table, summarize_methods
from tunelab.results import write_text
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


def compare(
    base: RunConfig,
    methods: list[str],
    seeds: int,
    overwrite: bool = False,
    resume: bool = False,
    on_run=None,
) -> list[dict]:
    """Run every method with its own defaults for ``seeds`` seeds into ``base.out_dir``.

    Everything but the method (and the seed) is shared, so the budget is the same; ``train.lr``
    is not forced on all methods unless the user set it (LoRA and prompt tuning need far larger
    rates than full fine-tuning).
    """
    records = []
    for method in methods:
        for seed in range(base.train.seed, base.train.seed + seeds):
            cfg = load_config(None, [f"train.seed={seed}"], **_as_sections(base, method))
            cfg.name = f"{method}-seed{seed}"
            try:
                rec = run(cfg, overwrite=overwrite, resume=resume)
            except RunFailed as e:  # recorded on disk; the other methods still run
                rec = {"name": cfg.name, "method": method, "status": "failed", "reason": str(e)}
            records.append(rec)
            if on_run:
                on_run(rec)
    return records


def _as_sections(base: RunConfig, method: str) -> dict:
    from tunelab.config import to_dict

    d = to_dict(base)
    d["method"] = {"name": method} if base.method_name != method else d["method"]
    d.pop("name")
    return d


def summarize(root: Path) -> tuple[str, list[dict]]:
    """Read every run record under ``root``; write comparison.md / comparison.csv there."""
    runs = load_runs(root)
    if not runs:
        raise TunelabError(f"no run records (result.json) under {str(root)!r}")
    rows = summarize_methods(runs)
    md = markdown_table(rows) if rows else "no successful runs"
    failed = [
        f"- {r['name']}: {r.get('status')}: {r.get('reason', '')}"
        for r in runs
        if r.get("status") != "ok"
    ]
    if failed:
        md += "\n\nFailed or stopped runs:\n" + "\n".join(failed)
    write_text(Path(root) / "comparison.md", md + "\n")
    write_text(Path(root) / "comparison.csv", csv_table(rows))
    return md, rows
