"""The serving side never imports a training library: every module of ``src/tabserve`` that imports one lives
under ``training/`` (the build included), the package the serving image leaves out (``deploy/image_check.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tabserve"
TRAINING_LIBRARIES = {"pandas", "sklearn", "lightgbm", "xgboost", "skl2onnx", "onnxmltools", "onnx"}
"""matplotlib is not here: the offline ``tabserve drift`` report (``observability/drift_report.py``) imports it
lazily, inside the function the CLI calls; the serving image has no matplotlib and its check imports that module."""


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_training_libraries_are_imported_only_under_training() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(_imported_roots(path) & TRAINING_LIBRARIES)
        for path in sorted(PACKAGE.rglob("*.py"))
        if "training" not in path.relative_to(PACKAGE).parts
    }
    assert {name: libs for name, libs in offenders.items() if libs} == {}
