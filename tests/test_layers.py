"""Layers point one way: the library knows nothing of stages, flows, DVC or Prefect, and only
``eva02at.tracking`` talks to MLflow."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "src" / "eva02at"
FORBIDDEN = {"stages", "flows", "dvc", "prefect"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_library_imports_no_stage_flow_or_orchestrator():
    offenders = {
        str(path.relative_to(LIBRARY)): sorted(imported_roots(path) & FORBIDDEN)
        for path in LIBRARY.rglob("*.py")
        if imported_roots(path) & FORBIDDEN
    }
    assert offenders == {}


def test_only_tracking_imports_mlflow():
    users = sorted(str(p.relative_to(LIBRARY)) for p in LIBRARY.rglob("*.py") if "mlflow" in imported_roots(p))
    assert users == ["tracking.py"]


def test_the_check_sees_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import dvc.api\nfrom prefect import flow\nfrom . import x\ndef f():\n    import mlflow\n")
    assert imported_roots(sample) == {"dvc", "prefect", "mlflow"}
