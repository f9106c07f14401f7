"""The shape the code keeps: short functions, a short loop, imports that run one way, and
every method shipped with a config (or a note saying why not)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tunelab.methods import METHODS

SRC = Path(__file__).parent.parent / "src" / "tunelab"
CONFIGS = Path(__file__).parent.parent / "configs"


def functions():
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(SRC)}:{node.name}", node.end_lineno - node.lineno + 1


def test_no_function_longer_than_60_lines():
    long = {name: n for name, n in functions() if n > 60}
    assert long == {}


def test_the_training_loop_module_stays_short():
    assert len((SRC / "train.py").read_text().splitlines()) < 300


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunelab"):
            out.add(node.module.split(".")[1] if "." in node.module else "")
            out |= {a.name for a in node.names} if node.module == "tunelab" else set()
    return out - {""}


def test_imports_have_no_cycles_and_measure_does_not_reach_into_methods():
    graph = {}
    for path in SRC.rglob("*.py"):
        mod = path.relative_to(SRC).parts[0].removesuffix(".py")
        graph.setdefault(mod, set()).update(imports(path) - {mod})
    assert "methods" not in graph["measure"]

    def visit(node, stack):
        assert node not in stack, f"import cycle: {' -> '.join([*stack, node])}"
        for nxt in graph.get(node, ()):
            visit(nxt, [*stack, node])

    for mod in graph:
        visit(mod, [])


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_a_config_or_says_why_not(name):
    assert (CONFIGS / f"{name}.yaml").exists() or METHODS[name].note
