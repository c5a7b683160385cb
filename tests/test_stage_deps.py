"""Stage dependencies stay complete: ``dvc.yaml`` lists every project module a stage imports, directly or not,
so that changing one reruns exactly the stages that use it, and the lineage tags name the code that ran."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"eva02at": ROOT / "src", "stages": ROOT}  # top-level project package -> the folder holding it


def module_file(name: str, packages: dict[str, Path]) -> Path | None:
    """The file of dotted module ``name`` (a package's ``__init__.py``), or None outside the project."""
    parts = name.split(".")
    if parts[0] not in packages:
        return None
    path = packages[parts[0]].joinpath(*parts)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def module_name(path: Path, packages: dict[str, Path]) -> str:
    for package, folder in packages.items():
        if path.is_relative_to(folder / package):
            parts = path.relative_to(folder).with_suffix("").parts
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(f"{path} is outside the project packages")


def imported_names(path: Path, packages: dict[str, Path]) -> set[str]:
    """Every module ``path`` may import: absolute and relative, at top level or inside functions, and the
    names of ``from x import y`` (a submodule when ``y`` is one)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = module_name(path, packages).split(".")
                package = package if path.name == "__init__.py" else package[:-1]
                module = ".".join(package[: len(package) - node.level + 1] + ([module] if module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def files_run_by_importing(name: str, packages: dict[str, Path]) -> list[Path]:
    """Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a/b/c`` (those in the project)."""
    parts = name.split(".")
    found = [module_file(".".join(parts[:end]), packages) for end in range(1, len(parts) + 1)]
    return [path for path in found if path is not None]


def imported_files(module: str, packages: dict[str, Path] = PACKAGES) -> set[Path]:
    """The project files that running module ``module`` executes, following its imports transitively."""
    seen: set[Path] = set()
    todo = files_run_by_importing(module, packages)
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            for name in imported_names(current, packages):
                todo += files_run_by_importing(name, packages)
    return seen


def dvc_stages(dvc_yaml: Path) -> dict[str, tuple[str, list[str]]]:
    """Each stage's command and deps (a ``foreach`` stage's from its ``do``), as written."""
    stages = YAML(typ="safe").load(dvc_yaml.read_text())["stages"]
    return {name: (s.get("do", s)["cmd"], s.get("do", s).get("deps", [])) for name, s in stages.items()}


def code_dep_problems(project: Path, packages: dict[str, Path] = PACKAGES) -> dict[str, dict[str, list[str]]]:
    """Per stage of ``project/dvc.yaml``: imported files no dep covers, and code deps that cover no import.

    A dep covers a file when it is that file or a folder above it. Deps with ``${...}`` are data paths.
    """
    problems = {}
    for stage, (cmd, deps) in dvc_stages(project / "dvc.yaml").items():
        entry = re.search(r"-m ([\w.]+)", cmd).group(1)
        used = {path.relative_to(project).as_posix() for path in imported_files(entry, packages)}
        code = [dep for dep in deps if "${" not in dep and dep.split("/")[0] in {"src", *packages}]

        def covers(dep: str, file: str) -> bool:
            return file == dep or file.startswith(dep.rstrip("/") + "/")

        missing = sorted(file for file in used if not any(covers(dep, file) for dep in code))
        unused = sorted(dep for dep in code if not any(covers(dep, file) for file in used))
        if missing or unused:
            problems[stage] = {"missing": missing, "unused": unused}
    return problems


def test_every_stage_lists_the_project_code_it_imports_and_nothing_else():
    assert code_dep_problems(ROOT) == {}


def test_the_synthetic_sample_renderer_reruns_only_the_sample_stage():
    users = [
        stage for stage, (_, deps) in dvc_stages(ROOT / "dvc.yaml").items() if "src/eva02at/data/synthetic" in deps
    ]
    assert users == ["sample"]


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_import_scan_follows_every_form_of_import(tmp_path):
    write_files(
        tmp_path,
        {
            "lib/__init__.py": "",
            "lib/direct.py": "",
            "lib/sub/__init__.py": "from .inner import thing\n",
            "lib/sub/inner.py": "from ..helper import x\nthing = 1\n",
            "lib/helper.py": "x = 1\n",
            "lib/lazy.py": "",
            "lib/unused.py": "",
            "app.py": "import os\nimport lib.direct\nfrom lib.sub import thing\ndef f():\n    from lib import lazy\n",
        },
    )
    found = imported_files("app", {"lib": tmp_path, "app": tmp_path})
    assert {p.relative_to(tmp_path).as_posix() for p in found} == {
        "app.py",
        "lib/__init__.py",
        "lib/direct.py",
        "lib/sub/__init__.py",
        "lib/sub/inner.py",
        "lib/helper.py",
        "lib/lazy.py",
    }


TINY_PROJECT = {
    "lib/__init__.py": "",
    "lib/shared.py": "GREETING = 'hello'\n",
    "lib/only_two.py": "SUFFIX = '!'\n",
    "lib/tools/__init__.py": "from lib.tools.upper import upper\n",
    "lib/tools/upper.py": "def upper(text):\n    return text.upper()\n",
    "stages/__init__.py": "",
    "stages/one.py": "from lib.shared import GREETING\nfrom lib.tools import upper\n"
    "open('one.txt', 'w').write(upper(GREETING))\n",
    "stages/two.py": "from lib import only_two, shared\n"
    "open('two.txt', 'w').write(shared.GREETING + only_two.SUFFIX)\n",
    "dvc.yaml": """\
stages:
  one:
    cmd: python -m stages.one
    deps: [stages/__init__.py, stages/one.py, lib/__init__.py, lib/shared.py, lib/tools]
    outs: [one.txt]
  two:
    cmd: python -m stages.two
    deps: [stages/__init__.py, stages/two.py, lib/__init__.py, lib/shared.py, lib/only_two.py]
    outs: [two.txt]
""",
}


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(PYTHONPATH=str(cwd))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def changed_stages(project: Path) -> list[str]:
    """The stages ``dvc status`` reports as changed."""
    return sorted(YAML(typ="safe").load(run([sys.executable, "-m", "dvc", "status", "--json"], project)) or {})


@pytest.mark.slow
def test_dvc_reruns_exactly_the_stages_that_import_a_changed_module(tmp_path):
    write_files(tmp_path, TINY_PROJECT)
    packages = {"lib": tmp_path, "stages": tmp_path}
    assert code_dep_problems(tmp_path, packages) == {}  # the tiny project follows the rule the test above checks
    run(["git", "init", "-q"], tmp_path)
    run([sys.executable, "-m", "dvc", "init", "-q"], tmp_path)
    run([sys.executable, "-m", "dvc", "repro", "-q"], tmp_path)
    assert changed_stages(tmp_path) == []

    for module, users in [
        ("lib/tools/upper.py", ["one"]),
        ("lib/only_two.py", ["two"]),
        ("lib/shared.py", ["one", "two"]),
    ]:
        original = (tmp_path / module).read_text()
        (tmp_path / module).write_text(original + "# changed\n")
        assert changed_stages(tmp_path) == users, module
        (tmp_path / module).write_text(original)
        assert changed_stages(tmp_path) == []
