"""``benchmark`` stage: one benchmark's query texts and ground truth, read by its module and frozen for export
and evaluate.

Usage: ``python -m stages.benchmark <name>``, the name being a key of ``benchmarks.entries`` and of a module
registered in ``eva02at.benchmarks``. The entry's files are copied as they are to ``<out>/<name>/``
(``queries<suffix>``, ``truth<suffix>``) and read there with the benchmark's own readers, so a malformed row
stops this stage, naming it, before any embedding is computed. Export and evaluate read the copies: DVC tracks
every benchmark's files through this stage's ``foreach``, and export and evaluate depend on ``<out>`` as one
folder, so a benchmark added to ``params.yaml`` needs no edit of ``dvc.yaml``. No MLflow run: nothing is
computed here that export and evaluate do not record.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from eva02at.atomic import atomic_path
from eva02at.benchmarks import BENCHMARKS, BenchmarkParams, benchmark_params, load_benchmark
from eva02at.config import ConfigError, from_dict
from eva02at.errors import MissingInput
from stages.common import load_params, stage_main, stage_params

log = logging.getLogger(__name__)
FILES = ("queries", "truth")  # the file fields every benchmark entry has


@dataclass
class BenchmarksParams:
    out: str  # benchmark@<name> freezes each benchmark's files in <out>/<name>
    entries: Annotated[dict[str, dict[str, Any]], Field(min_length=1)]  # name -> its module's params


def typed_entries(section: BenchmarksParams, params_file: str) -> dict[str, BenchmarkParams]:
    """Each entry checked against its benchmark's params dataclass; errors name the key path."""
    return {
        name: benchmark_params(name, values, f"{params_file}: benchmarks.entries.{name}")
        for name, values in section.entries.items()
    }


def frozen(entry: BenchmarkParams, folder: Path) -> BenchmarkParams:
    """``entry`` with its files replaced by their copies in ``folder``."""
    return replace(entry, **{key: str(folder / f"{key}{Path(getattr(entry, key)).suffix}") for key in FILES})


def frozen_benchmarks(params_file: str) -> dict[str, BenchmarkParams]:
    """Every benchmark's entry (params order) with its files replaced by the copies its stage freezes."""
    section = from_dict(BenchmarksParams, load_params("benchmarks", params_file), f"{params_file}: benchmarks")
    return {
        name: frozen(entry, Path(section.out) / name) for name, entry in typed_entries(section, params_file).items()
    }


def require_frozen(entries: dict[str, BenchmarkParams]) -> None:
    """Stop with one line when a benchmark's frozen copies are not there."""
    for name, entry in entries.items():
        for key in FILES:
            if not Path(getattr(entry, key)).exists():
                raise MissingInput(f"{getattr(entry, key)}: not there; `dvc repro benchmark@{name}` freezes it")


def freeze(entry: BenchmarkParams, folder: Path, where: str) -> BenchmarkParams:
    """Copy the entry's files (or folders) into ``folder``; the entry that reads the copies."""
    copies = frozen(entry, folder)
    for key in FILES:
        source, copy = Path(getattr(entry, key)), Path(getattr(copies, key))
        if source.is_dir():
            shutil.copytree(source, copy)
        elif source.is_file():
            shutil.copyfile(source, copy)
        else:
            raise MissingInput(f"{where}.{key}: {source}: no such file or folder")
    return copies


@stage_main
def main() -> None:
    section, args = stage_params("benchmarks", BenchmarksParams, __doc__, positional=("name",))
    name, where = args.name, f"{args.params}: benchmarks.entries.{args.name}"
    if name not in section.entries:
        raise ConfigError(f"{args.params}: benchmarks.entries has no {name!r}; known: {sorted(section.entries)}")
    entry = benchmark_params(name, section.entries[name], where)
    with atomic_path(Path(section.out) / name, directory=True) as folder:
        copies = freeze(entry, folder, where)
        ids, _ = BENCHMARKS[name].read_queries(copies)
        load_benchmark(name, copies)  # reads the ground truth
    log.info("%s: %d queries, clips of collection %s; frozen in %s", name, len(ids), entry.collection, section.out)


if __name__ == "__main__":
    main()
