"""The layering of lk_study: analysis is pandas only, spectra come from the kernels' own files."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import lk_study

PACKAGE = Path(lk_study.__file__).parent
MODULES = [
    "lk_study.storage",
    "lk_study.checkpoints",
    "lk_study.models",
    "lk_study.spectra",
    "lk_study.analysis",
    "lk_study.tables",
    "lk_study.train",
]
FORBIDDEN_IN_ANALYSIS = ("lk_study.train", "lk_study.models", "torch", "lk_study.spectra")


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


def _module_level_imports(path: Path) -> set[str]:
    """The modules a file imports at module level (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_analysis_imports_no_training_code_at_module_level():
    for name in ("analysis.py", "tables.py"):  # results loading, and the papers' tables
        for module in _module_level_imports(PACKAGE / name):
            assert not module.startswith(FORBIDDEN_IN_ANALYSIS), (name, module)
    for module in _module_level_imports(PACKAGE / "storage.py"):  # pyarrow only
        assert not module.startswith(("torch", "pandas", "lk_study")), module
    code = (
        "import sys, lk_study.analysis, lk_study.tables, lk_study.storage\n"
        "lk_study.analysis.GLUE_TASKS\n"  # the GLUE table's facts: lk_study.tasks.glue.SPECS
        f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN_IN_ANALYSIS!r})]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_import_no_task():
    for path in (PACKAGE / "models").glob("*.py"):
        for module in _module_level_imports(path):
            assert not module.startswith(("lk_study.tasks", "lk_study.train")), (path, module)


def test_learned_families_declare_their_spectral_parameters():
    from lk_study.kernels import KERNELS, build_kernel

    learned = {name for name, cls in KERNELS.items() if cls.learned}
    assert learned  # the families say so themselves (no name prefixes)
    for name, cls in KERNELS.items():
        kern = build_kernel(name, 8, 2, 8)
        params = kern.spectral_params()
        if cls.learned:
            assert params, name
            # the family implements the hooks in its own file, not in the base class
            assert inspect.getsourcefile(type(kern).spectral_params) != inspect.getsourcefile(
                lk_study.kernels.base.FeatureMap
            )
        else:
            assert params == {}, name


def test_build_model_uses_the_heads_table():
    from lk_study.models import HEADS, Classifier, DualClassifier, MaskedLM, Regressor

    assert HEADS == {
        "classify": Classifier,
        "regress": Regressor,
        "dual": DualClassifier,
        "mlm": MaskedLM,
    }
