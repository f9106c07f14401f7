"""The report is built from run records only, and renders in a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import tiny_overrides

from tunelab.comparison import Request, compare, summarize
from tunelab.config import load_config
from tunelab.report import build_report
from tunelab.report.analysis import pareto_front
from tunelab.report.stats import Estimate, ci95

# its expensive fixture is built once: the module stays on one xdist worker
pytestmark = pytest.mark.xdist_group("report")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")  # session: xdist interleaves modules, a module one is rebuilt
def runs_dir(tiny_model, toy_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmp")
    cfg = load_config(
        None,
        tiny_overrides(tiny_model, toy_csv, out, **{"train.lr": 2e-3, "train.evals_per_epoch": 2}),
    )
    compare(Request(cfg, ["full", "lora", "bitfit"], seeds=2))
    # a run that fails while training (the memory guard stops it): recorded, and shown
    os.environ["TUNELAB_MEMORY_FLOOR"] = str(1 << 50)  # more than any machine has
    try:
        compare(Request(cfg, ["prompt"], seeds=1))
    finally:
        del os.environ["TUNELAB_MEMORY_FLOOR"]
    return out


def cells(page_html: str) -> dict[tuple[str, str], float]:
    """(method, column key) -> the raw value the table cell was rendered from."""
    out = {}
    for row in re.findall(r'<tr data-method="([^"]+)"[^>]*>(.*?)</tr>', page_html):
        for key, value in re.findall(r'data-key="([^"]+)" data-value="([^"]+)"', row[1]):
            out[(row[0], key)] = float(value)
    return out


@pytest.mark.slow  # its fixture compares 8 runs: make test, not test-fast
def test_table_equals_records_and_follows_them(runs_dir):
    html_path, md_path = build_report(runs_dir)
    page = html_path.read_text()
    got = cells(page)
    recs = [json.loads(p.read_text()) for p in runs_dir.rglob("result.json")]
    lora = [r for r in recs if r["method"] == "lora"]
    mean_test = sum(100 * r["test"]["accuracy"] for r in lora) / len(lora)
    assert got[("lora", "test_acc")] == pytest.approx(mean_test, abs=1e-9)
    full = next(r for r in recs if r["method"] == "full")
    assert got[("full", "trainable")] == full["params"]["trainable"] == full["params"]["total"]
    # failed runs are shown with their reason, never dropped
    assert "prompt-seed0" in page and "TUNELAB_MEMORY_FLOOR" in page
    assert "prompt-seed0" in md_path.read_text()
    # change a record: the page changes with it
    path = runs_dir / "lora-seed0" / "result.json"
    original = path.read_text()
    rec = json.loads(original)
    rec["test"]["accuracy"] = 0.123
    path.write_text(json.dumps(rec))
    try:
        got2 = cells(build_report(runs_dir)[0].read_text())
        other = next(100 * r["test"]["accuracy"] for r in lora if r["name"] == "lora-seed1")
        assert got2[("lora", "test_acc")] == pytest.approx((12.3 + other) / 2, abs=1e-9)
    finally:
        path.write_text(original)
    md, _ = summarize(runs_dir)
    assert re.search(r"\| lora( \(did not learn\))? \| 2 \|", md)
    assert (runs_dir / "comparison.csv").exists()


def test_confidence_interval_and_pareto_front():
    est = ci95([1.0, 2.0, 3.0])
    assert est.mean == 2.0 and est.half == pytest.approx(4.303 * 1.0 / 3**0.5, rel=1e-3)
    assert ci95([5.0]) == Estimate(5.0, 0.0)
    assert pareto_front([(1, 50), (2, 60), (3, 55), (4, 70)]) == [(1, 50), (2, 60), (4, 70)]


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make browser installs it)")
def test_report_renders_in_headless_chromium(runs_dir, tmp_path):
    pw = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    html_path, _ = build_report(runs_dir)
    errors = []
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "request",
            lambda r: (
                errors.append(f"network: {r.url}")
                if not r.url.startswith(("file:", "data:"))
                else None
            ),
        )
        page.goto(html_path.as_uri())
        figures = page.locator("figure.plot svg")
        assert figures.count() == 7
        for i in range(figures.count()):
            box = figures.nth(i).bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100, i
        table = page.locator("#comparison")
        assert table.bounding_box()["height"] > 0
        shown = page.locator('tr[data-method="full"] td[data-key="test_acc"]').inner_text()
        rec = [json.loads(p.read_text()) for p in runs_dir.glob("full-seed*/result.json")]
        mean = sum(100 * r["test"]["accuracy"] for r in rec) / len(rec)
        assert shown.split(" ")[0] == f"{mean:,.2f}"
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    assert errors == []
