"""Imports flow downward only (docs/design.md §1): each package imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "longseq"

# package -> the longseq packages (and top-level modules) it may import, besides itself
ALLOWED: dict[str, set[str]] = {
    "kernels": set(),
    "ops": {"kernels"},
    "state": set(),
    "modules": {"ops", "state"},
    "cache": {"ops", "state"},
    "mixers": {"ops", "modules", "cache", "state"},
    "testing": {"ops", "modules", "cache", "state", "mixers"},
    "models": {"ops", "modules", "cache", "state", "mixers"},
    "interop": {"models"},
    "data": set(),
    "tasks": {"data"},
    "results": {"userinput", "kernels"},
}


def _longseq_imports(path: Path) -> set[str]:
    """The longseq packages a file imports (the first component after ``longseq.``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "longseq" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(package):
    files = [ROOT / f"{package}.py"] if (ROOT / f"{package}.py").exists() else sorted((ROOT / package).rglob("*.py"))
    assert files, f"no files for {package}"
    for path in files:
        wrong = _longseq_imports(path) - ALLOWED[package] - {package}
        assert not wrong, f"{path.relative_to(ROOT.parent)} imports {sorted(wrong)}; {package} may import only " \
                          f"{sorted(ALLOWED[package]) or 'nothing of longseq'}"


def test_the_trainer_reports_through_a_callback():
    wrong = _longseq_imports(ROOT / "train" / "trainer.py") & {"results", "bench"}
    assert not wrong, f"train/trainer.py imports {sorted(wrong)}"
