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


def module_of(path: Path) -> str:
    """'report.analysis' for src/tunelab/report/analysis.py, 'tasks' for its __init__.py."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The tunelab modules a file imports, at any depth, function-local imports included."""
    known = {module_of(p) for p in SRC.rglob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunelab"):
            base = node.module.removeprefix("tunelab").lstrip(".")
            for a in node.names:  # `from tunelab.report import sizes` imports a module
                sub = f"{base}.{a.name}".lstrip(".")
                out.add(sub if sub in known else base)
    return out - {""}


def graph() -> dict[str, set[str]]:
    return {module_of(p): imports(p) - {module_of(p)} for p in SRC.rglob("*.py")}


def test_imports_have_no_cycles_at_any_depth():
    g = graph()
    assert "methods" not in g["measure"]
    done: set[str] = set()

    def visit(node, stack):
        assert node not in stack, f"import cycle: {' -> '.join([*stack, node])}"
        if node in done:
            return
        for nxt in sorted(g.get(node, ())):
            visit(nxt, [*stack, node])
        done.add(node)

    for mod in sorted(g):
        visit(mod, [])


def test_the_cycle_check_sees_submodules():
    g = graph()
    assert "report.stats" in g["report.analysis"] and "report.sizes" in g["report.summary"]


def test_no_module_longer_than_450_lines():
    long = {
        module_of(p): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450
    }
    assert long == {}


# the seams are typed: these are read by attribute outside the module that defines them
UNTYPED = {".config.get(": "results", ".env.get(": "results", ".tuning[": "results"}
UNTYPED['f"val_'] = "results"
# string literals that equal a method's name but mean something else: an instruction column
# or a generation's field named "prompt" (data, tasks, predict, loggers)
NOT_METHODS = {("data", "prompt"), ("tasks.instruction", "prompt"), ("inference", "prompt")}
NOT_METHODS |= {("loggers", "prompt")}


def test_no_untyped_reads_across_a_seam():
    hits = [
        f"{module_of(p)}: {text}"
        for p in SRC.rglob("*.py")
        for text, home in UNTYPED.items()
        if text in p.read_text() and module_of(p) != home
    ]
    assert hits == []


def test_no_module_probes_a_task_or_names_a_method():
    probes, names = [], []
    for p in SRC.rglob("*.py"):
        mod = module_of(p)
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in (
                "getattr",
                "hasattr",
            ):
                if "task" in ast.unparse(node.args[0]).lower():
                    probes.append(f"{mod}: {ast.unparse(node)}")
            if isinstance(node, ast.Constant) and node.value in METHODS:
                if (
                    not mod.startswith("methods")
                    and mod != "cli"
                    and (mod, node.value) not in NOT_METHODS
                ):
                    names.append(f"{mod}:{node.lineno}: {node.value!r}")
    assert probes == [] and names == []


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_a_config_or_says_why_not(name):
    assert (CONFIGS / f"{name}.yaml").exists() or METHODS[name].note
