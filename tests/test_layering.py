"""The house rules, checked on the source: imports flow one way, Ray stays in the driver
modules, and no module or function outgrows one sitting (DESIGN §2, STYLE)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lk_study

PACKAGE = Path(lk_study.__file__).parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

# kernels -> attention -> models -> tasks -> (config, study) -> train -> tune -> cli; analysis
# beside train and tune, reading results only. A module imports modules of a lower rank, or
# of its own rank within its own group (a package importing its own submodules).
RANKS = {
    "generators": 0,  # pure numpy data generators
    "storage": 0,  # the study folder, pyarrow only
    "checkpoints": 0,  # the checkpoint format, torch only
    "kernels": 1,
    "attention": 2,
    "models": 3,
    "bench": 3,  # attention benchmarks: kernels and attention only
    "bench_approx": 3,
    "tasks": 4,
    "config": 5,
    "space": 5.5,  # the search-space language, read by study
    "tracking": 5.7,  # the study's tracking section (read by study); Ray only when tracking
    "study": 6,
    "train": 7,
    "spectra": 7,  # learned spectra: models from checkpoints
    "analysis": 7,  # results -> pandas: nothing from train, tune, models, spectra
    "tables": 6,  # the paper tables, re-exported by analysis
    "searchers": 8,
    "bench_train": 8,  # training-speed benchmark: study trial configs, train.build_model
    "trial": 8.5,  # one trial's training and checkpoints, on either runner (REPLAYED)
    "progress": 8,  # the study's console (a Tune callback)
    "tune": 9,
    "plots": 10,
    "report": 10.5,  # lk-study report: analysis tables and plots figures on one page
    "bench_study": 10,  # runs studies through tune
    "cli": 11,
}
RAY_MODULES = {"train", "trial", "progress", "tune", "searchers", "cli", "tracking"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def group(module: str) -> str:
    return module.split(".")[1] if module != "lk_study" else ""


def imports(path: Path, known: set[str], top_level_only: bool = False) -> set[str]:
    """The lk_study modules (and 'ray') a file imports, anywhere in it or at module level."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "ray":
                found.add("ray")
            elif name.startswith("lk_study"):
                found.add(name)
    return found


MODULES = modules()


def test_every_module_has_a_rank():
    assert {group(m) for m in MODULES if m != "lk_study"} == set(RANKS)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "lk_study"))
def test_imports_flow_one_way(module):
    own = group(module)
    for dep in imports(MODULES[module], set(MODULES)) - {"ray", "lk_study"}:
        other = group(dep)
        if other == own:
            continue
        assert RANKS[other] < RANKS[own], f"{module} imports {dep}, which is not below it"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_ray_only_in_the_driver_modules(module):
    if "ray" in imports(MODULES[module], set(MODULES)):
        assert group(module) in RAY_MODULES, module


def test_no_import_circle():
    """Module-level imports between lk_study modules form no cycle."""
    graph = {
        m: {d for d in imports(p, set(MODULES), top_level_only=True) if d in MODULES and d != m}
        for m, p in MODULES.items()
    }
    for m in graph:  # a package imports its submodules; the parent edge is not a cycle
        graph[m] = {d for d in graph[m] if not m.startswith(f"{d}.")}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            if not state.get(nxt):
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for m in graph:
        if not state.get(m):
            visit(m, [m])


def test_the_rules_catch_a_violation(tmp_path):
    """The import reader is not vacuous: it sees an upward import and a Ray import."""
    bad = tmp_path / "bad.py"
    bad.write_text("from lk_study.train import fit\nimport ray.tune\n")
    assert imports(bad, set(MODULES)) == {"lk_study.train", "ray"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_fit_one_sitting(module):
    text = MODULES[module].read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, module
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{module}.{node.name}: {length} lines"
