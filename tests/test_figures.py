"""Every figure of the README, the docs and bench/RESULTS.md matches the committed result file
it names (bench/figures.py in check mode); a digit changed in a throwaway copy is caught; the
README stays a front door; the docs build as a site with no warnings."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import figures  # noqa: E402


def test_every_figure_matches_its_result_file():
    assert figures.check(figures.documents()) == []


def _bump_digit(text: str, start: int) -> str:
    """The text with the first digit at or after ``start`` changed."""
    i = next(i for i in range(start, len(text)) if text[i].isdigit())
    return text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1 :]


def test_a_changed_digit_in_a_copy_fails_the_check(tmp_path):
    docs = [p for p in figures.documents() if figures.VALUE.search(p.read_text())]
    blocks = [p for p in figures.documents() if figures.BLOCK.search(p.read_text())]
    assert docs and blocks, "no marked figures found"
    for source, pattern, group in ((docs[0], figures.VALUE, "text"),
                                   (blocks[0], figures.BLOCK, "body")):  # fmt: skip
        text = source.read_text()
        m = pattern.search(text)
        copy = tmp_path / source.name
        copy.write_text(_bump_digit(text, m.start(group)))
        assert figures.check([copy]) != [], f"a changed digit in {source.name} went unnoticed"
        shutil.copy(source, copy)
        assert figures.check([copy]) == []


def test_every_block_names_its_machine():
    for p in figures.documents():
        for m in figures.BLOCK.finditer(p.read_text()):
            assert "(machine: " in m["body"], (p.name, m["name"])


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), link
    assert "this machine" not in readme.lower()


def test_the_docs_build_without_warnings(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "api" / "index.html").exists()
