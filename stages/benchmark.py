"""``benchmark`` stage: one benchmark's query texts and ground truth, read by its module and frozen for export
and evaluate.

Usage: ``python -m stages.benchmark <name>``, the name being a key of ``benchmarks.entries`` and of a module
registered in ``eva02at.evaluation.benchmarks``. The entry's files are copied as they are to ``<out>/<name>/``
(``queries<suffix>``, ``truth<suffix>``) and read there with the benchmark's own readers, so a malformed row
stops this stage, naming it, before any embedding is computed. Export and evaluate read the copies: DVC tracks
every benchmark's files through this stage's ``foreach``, and export and evaluate depend on ``<out>`` as one
folder, so a benchmark added to ``params.yaml`` needs no edit of ``dvc.yaml``. No MLflow run: nothing is
computed here that export and evaluate do not record.
"""

from __future__ import annotations

import logging
from pathlib import Path

from eva02at.core.atomic import atomic_path
from eva02at.core.config import ConfigError
from eva02at.evaluation.benchmarks import BENCHMARKS, benchmark_params, load_benchmark
from eva02at.evaluation.benchmarks.frozen import BenchmarkSuiteParams, freeze
from stages.common import stage_main, stage_params

log = logging.getLogger(__name__)


@stage_main
def main() -> None:
    section, args = stage_params("benchmarks", BenchmarkSuiteParams, __doc__, positional=("name",))
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
