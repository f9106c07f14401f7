"""`tunelab compare --train-sizes`: every method at each size, the report's article table."""

from __future__ import annotations

import contextlib
import io

import pytest

from tests.conftest import tiny_overrides
from tunelab.cli import main
from tunelab.comparison import clip_sizes, parse_sizes
from tunelab.results import load_records


@pytest.mark.slow  # a compare at three sizes: make test, not test-fast
def test_compare_at_several_sizes_writes_the_articles_table(tiny_model, toy_csv, tmp_path):
    out = tmp_path / "sizes"
    args = tiny_overrides(tiny_model, toy_csv, out, **{"train.epochs": 1})
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["compare", *args, "--methods", "full,lora", "--train-sizes", "40,100,5000"])
    assert rc == 0
    assert "5000] >= the" in stdout.getvalue()  # larger than the data: run once, as 'all'
    names = sorted(r.name for r in load_records(out))
    assert names == [
        "full-n100-seed0", "full-n40-seed0", "full-nall-seed0",
        "lora-n100-seed0", "lora-n40-seed0", "lora-nall-seed0",
    ]  # fmt: skip
    sizes = sorted({r.data.train for r in load_records(out)})
    assert sizes[:2] == [40, 100] and sizes[2] > 100
    md = (out / "report.md").read_text()
    assert "## Training-set size: the article's table, measured" in md
    assert "full, efficacy high:" in md and "lora, cost low:" in md
    html = (out / "report.html").read_text()
    assert 'id="article-table"' in html and 'id="size-curve"' in html
    # the main comparison is at the largest size only: one row per method
    assert md.count("| full |") == 1


def test_size_lists():
    assert parse_sizes("300, 100,all,100") == [100, 300, None]
    assert clip_sizes([100, 300, None], 200) == ([100, None], [300])
    assert clip_sizes([100, 300], 200) == ([100, None], [300])
    for bad in ("0", "ten", ","):
        try:
            parse_sizes(bad)
        except Exception as e:
            assert "--train-sizes" in str(e)
        else:
            raise AssertionError(bad)
