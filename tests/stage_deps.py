"""Each stage's code deps in ``dvc.yaml``, derived from the imports: checked by ``tests/test_stage_deps.py``,
written by ``python -m tests.stage_deps --write`` after a module is added, moved or imported differently.

A stage's code deps are the project files that running its module executes, following imports transitively
(absolute and relative, at top level or inside functions). A package folder is written as one dep when the
stage uses every module in it, or when it holds data files (``models/configs/*.json``), which the import scan
cannot see; otherwise its modules are listed one by one, so that changing one reruns only the stages that
import it. Data deps (``${...}`` and paths outside the code) and comments are kept as they are.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"eva02at": ROOT / "src", "stages": ROOT}  # top-level project package -> the folder holding it
WRITE_COMMAND = "python -m tests.stage_deps --write"


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


def stage_body(stage: dict) -> dict:
    """A stage's definition (a ``foreach`` stage's ``do``)."""
    return stage.get("do", stage)


def stage_entry(cmd: str) -> str:
    """The module a stage command runs (``python -m stages.x`` or ``${train_launcher} -m stages.x``)."""
    return re.search(r"-m ([\w.]+)", cmd).group(1)


def is_code_dep(dep: str, packages: dict[str, Path]) -> bool:
    """A dep inside the project's code folders; ``${...}`` deps are data paths."""
    return "${" not in dep and dep.split("/")[0] in {"src", *packages}


def has_data_files(package: Path) -> bool:
    """Whether ``package`` holds files other than modules outside its subpackages (data it reads at run time)."""
    folders = [path for path in package.iterdir() if path.is_dir() and path.name != "__pycache__"]
    data_folders = [path for path in folders if not (path / "__init__.py").is_file()]
    files = [path for path in package.iterdir() if path.is_file()]
    return any(path.suffix != ".py" for path in files) or any(
        item.is_file() for folder in data_folders for item in folder.rglob("*")
    )


def covering_deps(folder: Path, used: set[Path]) -> list[Path]:
    """The fewest deps under ``folder`` that cover the ``used`` files: the folder itself when the stage uses all
    of its modules or it holds data files, else its used modules and the deps of its subfolders."""
    files = [path for path in folder.rglob("*") if path.is_file() and "__pycache__" not in path.parts]
    modules = [path for path in files if path.suffix == ".py"]
    if not any(path in used for path in modules):
        return []
    if (folder / "__init__.py").is_file() and (all(path in used for path in modules) or has_data_files(folder)):
        return [folder]
    deps = [path for path in sorted(folder.glob("*.py")) if path in used]
    for sub in sorted(path for path in folder.iterdir() if path.is_dir() and path.name != "__pycache__"):
        deps += covering_deps(sub, used)
    return deps


def derived_code_deps(project: Path, packages: dict[str, Path] = PACKAGES) -> dict[str, list[str]]:
    """Per stage of ``project/dvc.yaml``: the code deps its imports call for, in path order."""
    stages = YAML(typ="safe").load((project / "dvc.yaml").read_text())["stages"]
    derived = {}
    for name, stage in stages.items():
        used = imported_files(stage_entry(stage_body(stage)["cmd"]), packages)
        deps = [dep for package, folder in packages.items() for dep in covering_deps(folder / package, used)]
        derived[name] = sorted(dep.relative_to(project).as_posix() for dep in deps)
    return derived


def listed_code_deps(project: Path, packages: dict[str, Path] = PACKAGES) -> dict[str, list[str]]:
    """Per stage of ``project/dvc.yaml``: the code deps it lists, as written."""
    stages = YAML(typ="safe").load((project / "dvc.yaml").read_text())["stages"]
    return {
        name: [dep for dep in stage_body(stage).get("deps", []) if is_code_dep(dep, packages)]
        for name, stage in stages.items()
    }


def stages_using(project: Path, file: str, packages: dict[str, Path] = PACKAGES) -> list[str]:
    """The stages whose derived code deps cover ``file`` (a path in ``project``): those a change to it reruns."""
    derived = derived_code_deps(project, packages)
    return [name for name, deps in derived.items() if any(file == d or file.startswith(f"{d}/") for d in deps)]


def write_code_deps(project: Path, packages: dict[str, Path] = PACKAGES) -> list[str]:
    """Rewrite each stage's code deps in ``project/dvc.yaml`` as derived, first in its deps, keeping its data
    deps, their order and every comment; the stages whose code deps changed."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long line
    yaml.indent(mapping=2, sequence=4, offset=2)
    path = project / "dvc.yaml"
    document = yaml.load(path.read_text())
    derived, changed = derived_code_deps(project, packages), []
    for name, stage in document["stages"].items():
        deps = stage_body(stage)["deps"]
        if [dep for dep in deps if is_code_dep(dep, packages)] == derived[name]:
            continue
        for index in reversed(range(len(deps))):
            if is_code_dep(deps[index], packages):
                del deps[index]
        for index, dep in enumerate(derived[name]):
            deps.insert(index, dep)
        changed.append(name)
    if changed:
        with path.open("w") as handle:
            yaml.dump(document, handle)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml (default: list what differs)")
    parser.add_argument("--project", type=Path, default=ROOT, help="the project folder holding dvc.yaml")
    args = parser.parse_args()
    packages = {name: args.project / folder.relative_to(ROOT) for name, folder in PACKAGES.items()}
    if args.write:
        changed = write_code_deps(args.project, packages)
        print(f"code deps rewritten for {', '.join(changed)}" if changed else "code deps up to date")
        return
    listed, derived = listed_code_deps(args.project, packages), derived_code_deps(args.project, packages)
    stale = [name for name in derived if listed[name] != derived[name]]
    for name in stale:
        print(f"{name}: listed {listed[name]}\n{' ' * len(name)}  derived {derived[name]}")
    sys.exit(f"code deps differ from the imports: run `{WRITE_COMMAND}`" if stale else 0)


if __name__ == "__main__":
    main()
