"""An isolated copy of the project with its params overridden: what the rehearsal runs in, and what the tests'
tiny pipeline is built from.

The copy holds the repository's tracked and untracked-but-not-ignored files (no virtual environment, pipeline
outputs or local MLflow store) and a git history of its own, so that ``dvc repro`` there never touches the
workspace it was copied from. Overrides are merged into its ``params.yaml`` key by key, at any depth: an
override names only the keys it changes, and the params file keeps its comments.

``python -m rehearsal.project PARAMS OVERRIDE...`` merges override files into a params file in place (how a
real run starts from ``rehearsal/recipe.yaml``, see README, Real data).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from eva02at.core.atomic import write_text
from eva02at.core.config import read_params

ROOT = Path(__file__).resolve().parents[1]
NULL = "tag:yaml.org,2002:null"


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True).stdout


def copy_project(dest: Path, source: Path = ROOT) -> Path:
    """The tracked and untracked-not-ignored files of ``source``, copied to ``dest``."""
    listed = git(source, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, listed):
        if (source / name).is_file():  # a tracked file may have been deleted in the working tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    return dest


def merge(params: dict, override: Mapping[str, Any]) -> dict:
    """``params`` with ``override`` merged in, in place: a mapping merges into a mapping key by key, any other
    value (a list, a number, null) replaces the value it meets."""
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(params.get(key), Mapping):
            merge(params[key], value)
        else:
            params[key] = value
    return params


def override_params(path: Path, *overrides: Mapping[str, Any] | Path) -> None:
    """Merge ``overrides`` (mappings, or params files) into the params file ``path``, in order, keeping the comments
    and styles of both (ruamel.yaml's round trip; YAML 1.2, as DVC and ``eva02at.core.config.read_params`` read it)."""
    yaml = YAML()
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)  # params.yaml's style
    yaml.representer.add_representer(type(None), lambda dumper, _: dumper.represent_scalar(NULL, "null"))
    params = yaml.load(path.read_text()) or {}
    for override in overrides:
        if isinstance(override, Path):
            read_params(override)  # a clear one-line error for a missing or malformed file
            override = yaml.load(override.read_text()) or {}
        merge(params, override)
    text = io.StringIO()
    yaml.dump(params, text)
    write_text(path, text.getvalue())


def make_project(
    dest: Path, *overrides: Mapping[str, Any] | Path, files: Mapping[str, str] | None = None, source: Path = ROOT
) -> Path:
    """A committed copy of ``source`` at ``dest`` whose params.yaml has ``overrides`` merged in, with ``files``
    (path in the project -> text) added."""
    project = copy_project(dest, source)
    override_params(project / "params.yaml", *overrides)
    for name, text in (files or {}).items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    git(project, "init", "-q", "-b", "main")
    git(project, "config", "user.email", "rehearsal@eva02at.invalid")
    git(project, "config", "user.name", "eva02at rehearsal")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "isolated copy")
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description="Merge override files into a params file, keeping its comments.")
    parser.add_argument("params", type=Path, help="the params file to rewrite (params.yaml)")
    parser.add_argument("overrides", type=Path, nargs="+", help="override files, merged in this order")
    args = parser.parse_args()
    override_params(args.params, *args.overrides)
    print(f"merged {', '.join(map(str, args.overrides))} into {args.params}", file=sys.stderr)


if __name__ == "__main__":
    main()
