"""Stage dependencies stay complete: ``dvc.yaml`` lists every project module a stage imports, directly or not,
so that changing one reruns exactly the stages that use it, and the lineage tags name the code that ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.stage_deps import (
    PACKAGES,
    ROOT,
    WRITE_COMMAND,
    derived_code_deps,
    imported_files,
    is_code_dep,
    listed_code_deps,
    stage_body,
    stage_entry,
    write_code_deps,
)


def dvc_stages(dvc_yaml: Path) -> dict[str, list[str]]:
    """Each stage's deps (a ``foreach`` stage's from its ``do``), as written."""
    stages = YAML(typ="safe").load(dvc_yaml.read_text())["stages"]
    return {name: stage_body(stage).get("deps", []) for name, stage in stages.items()}


def code_dep_problems(project: Path, packages: dict[str, Path] = PACKAGES) -> dict[str, dict[str, list[str]]]:
    """Per stage of ``project/dvc.yaml``: imported files no dep covers, and code deps that cover no import.

    A dep covers a file when it is that file or a folder above it. Deps with ``${...}`` are data paths.
    """
    problems = {}
    stages = YAML(typ="safe").load((project / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        entry = stage_entry(stage_body(stage)["cmd"])
        used = {path.relative_to(project).as_posix() for path in imported_files(entry, packages)}
        code = [dep for dep in stage_body(stage).get("deps", []) if is_code_dep(dep, packages)]

        def covers(dep: str, file: str) -> bool:
            return file == dep or file.startswith(dep.rstrip("/") + "/")

        missing = sorted(file for file in used if not any(covers(dep, file) for dep in code))
        unused = sorted(dep for dep in code if not any(covers(dep, file) for file in used))
        if missing or unused:
            problems[name] = {"missing": missing, "unused": unused}
    return problems


def test_every_stage_lists_the_project_code_it_imports_and_nothing_else():
    problems = code_dep_problems(ROOT)
    assert problems == {}, f"dvc.yaml's code deps do not follow the imports: run `{WRITE_COMMAND}`"


def test_the_code_deps_are_those_the_writer_writes():
    listed, derived = listed_code_deps(ROOT), derived_code_deps(ROOT)
    assert listed == derived, f"dvc.yaml's code deps differ from the imports: run `{WRITE_COMMAND}`"


def test_the_synthetic_sample_renderer_reruns_only_the_sample_stage():
    users = [stage for stage, deps in dvc_stages(ROOT / "dvc.yaml").items() if "src/eva02at/data/synthetic" in deps]
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


def test_the_writer_rewrites_code_deps_and_keeps_data_deps_and_comments(tmp_path):
    write_files(tmp_path, TINY_PROJECT)
    write_files(
        tmp_path,
        {
            "lib/tools/lower.py": "def lower(text):\n    return text.lower()\n",  # unused: tools/ not whole
            "lib/tables/__init__.py": "",
            "lib/tables/names.json": "{}\n",  # package data: tables/ is written whole
            "stages/two.py": TINY_PROJECT["stages/two.py"] + "import lib.tables\n",
            "dvc.yaml": """\
# the header stays
stages:
  one:
    cmd: python -m stages.one
    deps:
      - ${inputs.one}   # a data dep stays, with its comment
      - stages/one.py
      - lib/only_two.py
    outs:
      - one.txt
  two:
    cmd: python -m stages.two
    deps:
      - lib
      - stages
    outs:
      - two.txt
""",
        },
    )
    packages = {"lib": tmp_path, "stages": tmp_path}
    assert write_code_deps(tmp_path, packages) == ["one", "two"]
    text = (tmp_path / "dvc.yaml").read_text()
    assert (
        text.startswith("# the header stays\n")
        and "      - ${inputs.one}   # a data dep stays, with its comment\n" in text
    )
    deps = dvc_stages(tmp_path / "dvc.yaml")
    assert deps["one"] == [
        "lib/__init__.py",
        "lib/shared.py",
        "lib/tools/__init__.py",
        "lib/tools/upper.py",
        "stages/__init__.py",
        "stages/one.py",
        "${inputs.one}",
    ]
    assert deps["two"] == [
        "lib/__init__.py",
        "lib/only_two.py",
        "lib/shared.py",
        "lib/tables",
        "stages/__init__.py",
        "stages/two.py",
    ]
    assert code_dep_problems(tmp_path, packages) == {}
    assert write_code_deps(tmp_path, packages) == [] and (tmp_path / "dvc.yaml").read_text() == text


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
