"""Run several methods (and seeds) on the same data and budget; tabulate from run records."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from tunelab.config import RunConfig, load_config
from tunelab.errors import TunelabError
from tunelab.methods import METHODS
from tunelab.results import find_runs, read_result
from tunelab.train import run


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise TunelabError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose "
                           f"from: {', '.join(METHODS)}")
    return names


def compare(base: RunConfig, methods: list[str], seeds: int, overwrite: bool = False,
            resume: bool = False, on_run=None) -> list[dict]:
    """Run every method with its own defaults for ``seeds`` seeds into ``base.out_dir``.

    Everything but the method (and the seed) is shared, so the budget is the same; ``train.lr``
    is not forced on all methods unless the user set it (LoRA and prompt tuning need far larger
    rates than full fine-tuning).
    """
    records = []
    for method in methods:
        for seed in range(base.train.seed, base.train.seed + seeds):
            cfg = load_config(None, [f"train.seed={seed}"],
                              **_as_sections(base, method))
            cfg.name = f"{method}-seed{seed}"
            rec = run(cfg, overwrite=overwrite, resume=resume)
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


COLUMNS = [
    ("method", "method"), ("runs", "runs"), ("trainable_pct", "trainable %"),
    ("trainable", "trainable params"), ("train_s", "train time (s)"),
    ("examples_per_s", "examples/s"), ("peak_mb", "peak mem (MB)"), ("saved_mb", "saved (MB)"),
    ("val_accuracy", "val acc"), ("test_accuracy", "test acc"), ("test_macro_f1", "test F1"),
]


def rows_from_records(records: list[dict]) -> list[dict]:
    """One row per method: mean (and sample std over seeds) of each measurement."""
    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    rows = []
    for method, recs in by_method.items():
        ok = [r for r in recs if r.get("status") == "ok"]
        row: dict = {"method": method, "runs": f"{len(ok)}/{len(recs)}"}
        if not ok:
            row["note"] = "; ".join(r.get("reason", r.get("status", "?")) for r in recs)
            rows.append(row)
            continue
        values = {
            "trainable_pct": [r["params"]["trainable_pct"] for r in ok],
            "trainable": [r["params"]["trainable"] for r in ok],
            "train_s": [r["timing"]["train_s"] for r in ok],
            "examples_per_s": [r["timing"]["examples_per_s"] for r in ok],
            "peak_mb": [r["memory"]["peak_bytes"] / 2**20 for r in ok],
            "saved_mb": [r["saved_bytes"] / 2**20 for r in ok],
            "val_accuracy": [100 * r["best_validation"]["accuracy"] for r in ok],
            "test_accuracy": [100 * r["test"]["accuracy"] for r in ok],
            "test_macro_f1": [100 * r["test"]["macro_f1"] for r in ok],
        }
        for key, vals in values.items():
            row[key] = statistics.fmean(vals)
            row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def _fmt(row: dict, key: str) -> str:
    if key not in row:
        return "-" if key != "method" else row["method"]
    v = row[key]
    if isinstance(v, str):
        return v
    digits = {"trainable_pct": 2, "trainable": 0, "saved_mb": 2}.get(key, 1)
    text = f"{v:,.{digits}f}"
    std = row.get(key + "_std", 0.0)
    return f"{text} ± {std:.{digits}f}" if std else text


def markdown_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(r, k) for k, _ in COLUMNS) + " |" for r in rows]
    notes = [f"- {r['method']}: failed: {r['note']}" for r in rows if "note" in r]
    return "\n".join([head, sep, *body] + ([""] + notes if notes else []))


def csv_table(rows: list[dict]) -> str:
    keys = ["method", "runs"] + [k for k, _ in COLUMNS[2:]]
    keys += [k + "_std" for k in keys[2:]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys + ["note"], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def summarize(root: Path) -> tuple[str, list[dict]]:
    """Read every run record under ``root`` and write comparison.md / comparison.csv there."""
    records = [rec for d in find_runs(root) if (rec := read_result(d))]
    if not records:
        raise TunelabError(f"no run records (result.json) under {str(root)!r}")
    rows = rows_from_records(records)
    md = markdown_table(rows)
    (Path(root) / "comparison.md").write_text(md + "\n")
    (Path(root) / "comparison.csv").write_text(csv_table(rows))
    return md, rows
