"""Layers point one way.

The library is grouped by role, each layer importing only the layers below it (``LAYERS``); it knows nothing
of stages, flows, DVC or Prefect, and only ``eva02at.core.tracking`` talks to MLflow. A stage imports the
library and the stages' shared plumbing, never another stage.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "src" / "eva02at"
FORBIDDEN = {"stages", "flows", "dvc", "prefect"}
# layer -> rank: a module may import its own layer and those of lower rank; data and models are siblings
LAYERS = {"core": 0, "data": 1, "models": 1, "train": 2, "export": 3, "evaluation": 4, "search": 5, "cli": 6}
STAGE_PLUMBING = {
    "stages",
    "stages.common",
    "stages.lineage",
    "stages.training",
    "stages.selection",
}  # shared by the stages


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at top level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def layer_of(module: str) -> str | None:
    """``eva02at.<layer>...`` -> layer; the package's own ``__init__`` has none."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "eva02at" and parts[1] in LAYERS else None


def layer_violations(library: Path) -> list[str]:
    """Each import of the library that goes up a layer or sideways to a sibling, and each module outside a
    layer, as ``file: imported module``."""
    problems = []
    for path in sorted(library.rglob("*.py")):
        relative = path.relative_to(library)
        if relative == Path("__init__.py"):
            continue
        own = relative.parts[0]
        if own not in LAYERS:
            problems.append(f"{relative}: outside every layer ({sorted(LAYERS)})")
            continue
        for module in sorted(imported_modules(path)):
            layer = layer_of(module)
            if layer is not None and layer != own and LAYERS[layer] >= LAYERS[own]:
                problems.append(f"{relative}: {module}")
    return problems


def stage_modules(root: Path) -> set[str]:
    """The modules ``dvc.yaml``'s commands run (``python -m stages.<name>``)."""
    stages = YAML(typ="safe").load((root / "dvc.yaml").read_text())["stages"]
    return {re.search(r"-m ([\w.]+)", s.get("do", s)["cmd"]).group(1) for s in stages.values()}


def stage_violations(root: Path) -> list[str]:
    """Each import of one stage by another (what stages share belongs in the library or the plumbing)."""
    problems = []
    for module in sorted(stage_modules(root)):
        path = root.joinpath(*module.split(".")).with_suffix(".py")
        for imported in sorted(imported_modules(path)):
            parts = imported.split(".")
            if parts[0] == "stages" and ".".join(parts[:2]) not in STAGE_PLUMBING:
                problems.append(f"{module}: {imported}")
    return problems


def test_each_layer_imports_only_the_layers_below_it():
    assert layer_violations(LIBRARY) == []


def test_no_stage_imports_another_stage():
    assert stage_violations(ROOT) == []


def test_the_checks_fail_on_a_planted_upward_import_and_a_stage_import(tmp_path):
    library = tmp_path / "src" / "eva02at"
    shutil.copytree(LIBRARY, library, ignore=shutil.ignore_patterns("__pycache__"))
    (library / "data" / "planted.py").write_text("def f():\n    from eva02at.search.query import search\n")
    (library / "models" / "sideways.py").write_text("import eva02at.data.video\n")
    (library / "loose.py").write_text("")
    assert layer_violations(library) == [
        "data/planted.py: eva02at.search.query",
        "data/planted.py: eva02at.search.query.search",
        "loose.py: outside every layer (['cli', 'core', 'data', 'evaluation', 'export', 'models', 'search', 'train'])",
        "models/sideways.py: eva02at.data.video",
    ]
    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    export = tmp_path / "stages" / "export.py"
    export.write_text(export.read_text() + "\nfrom stages.benchmark import main as freeze_main  # noqa\n")
    assert stage_violations(tmp_path) == ["stages.export: stages.benchmark", "stages.export: stages.benchmark.main"]


def test_library_imports_no_stage_flow_or_orchestrator():
    offenders = {
        str(path.relative_to(LIBRARY)): sorted(imported_roots(path) & FORBIDDEN)
        for path in LIBRARY.rglob("*.py")
        if imported_roots(path) & FORBIDDEN
    }
    assert offenders == {}


def test_only_tracking_imports_mlflow():
    users = sorted(str(p.relative_to(LIBRARY)) for p in LIBRARY.rglob("*.py") if "mlflow" in imported_roots(p))
    assert users == ["core/tracking.py"]


def test_the_check_sees_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import dvc.api\nfrom prefect import flow\nfrom . import x\ndef f():\n    import mlflow\n")
    assert imported_roots(sample) == {"dvc", "prefect", "mlflow"}
