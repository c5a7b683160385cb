"""The ``benchmarks`` params section and its frozen copies: what the benchmark stage writes and every later
consumer (export, evaluate, best-epoch selection) reads.

Each benchmark's files are copied as they are to ``<out>/<name>/`` (``queries<suffix>``, ``truth<suffix>``), so
that DVC tracks them through one stage and a malformed row stops that stage before any embedding is computed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from eva02at.core.config import read_section
from eva02at.core.errors import MissingInput
from eva02at.evaluation.benchmarks import BenchmarkParams, benchmark_params

FILES = ("queries", "truth")  # the file fields every benchmark entry has


@dataclass
class BenchmarkSuiteParams:
    """The ``benchmarks`` section: where the frozen copies go, and each benchmark's entry."""

    out: str  # benchmark@<name> freezes each benchmark's files in <out>/<name>
    entries: Annotated[dict[str, dict[str, Any]], Field(min_length=1)]  # name -> its module's params


def typed_entries(section: BenchmarkSuiteParams, params_file: str) -> dict[str, BenchmarkParams]:
    """Each entry checked against its benchmark's params dataclass; errors name the key path."""
    return {
        name: benchmark_params(name, values, f"{params_file}: benchmarks.entries.{name}")
        for name, values in section.entries.items()
    }


def read_suite(params_file: str) -> dict[str, BenchmarkParams]:
    """Every benchmark's entry of ``params_file``, typed, in params order (files as the params name them)."""
    return typed_entries(read_section(BenchmarkSuiteParams, params_file, "benchmarks"), params_file)


def frozen(entry: BenchmarkParams, folder: Path) -> BenchmarkParams:
    """``entry`` with its files replaced by their copies in ``folder``."""
    return replace(entry, **{key: str(folder / f"{key}{Path(getattr(entry, key)).suffix}") for key in FILES})


def frozen_benchmarks(params_file: str) -> dict[str, BenchmarkParams]:
    """Every benchmark's entry (params order) with its files replaced by the copies its stage freezes."""
    section = read_section(BenchmarkSuiteParams, params_file, "benchmarks")
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
