"""``export`` stage: video embeddings of every benchmark's collection and of the search collections, and text
embeddings of every benchmark's queries, for every model, to Parquet.

Writes ``<out>/<model>/<collection>_video.parquet`` (every clip that decoded; a collection shared by several
benchmarks once), with ``export.codes`` its compact codes ``<collection>_video.codes.parquet``, and
``<out>/<model>/<benchmark>_text.parquet``. Benchmarks are the ``benchmarks`` params' entries, their queries
read from the copies the ``benchmark`` stage froze. The whole output folder is replaced at the end, so an
interrupted run leaves the previous exports (or none), never a partial set. Launched with ``train_launcher``:
under torchrun every rank embeds its share of each collection and rank 0 writes the files a single process
would. One MLflow run "export" records the params, the lineage tags and how many clips and texts each export
holds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import Field

from eva02at.core.atomic import atomic_path
from eva02at.core.config import NonNegativeInt, PositiveInt
from eva02at.core.digest import file_digest
from eva02at.core.distributed import DistInfo, broadcast, cleanup, setup
from eva02at.core.tracking import read_settings
from eva02at.evaluation.benchmarks import BENCHMARKS, BenchmarkParams
from eva02at.evaluation.benchmarks.frozen import frozen_benchmarks, require_frozen
from eva02at.export.codes import CodesParams, codes_path, export_codes
from eva02at.export.embeddings import TEXT, VIDEO, export_path
from eva02at.export.inference import export_texts, export_videos, resolve_device
from eva02at.models import load_video_clip
from stages.common import stage_main, stage_params
from stages.lineage import stage_run

log = logging.getLogger(__name__)


@dataclass
class ExportParams:
    out: str
    frames: str  # the frames stage's folder: collection <name> is read from <frames>/<name>
    models: dict[str, str]  # name (zero_shot, finetuned) -> video checkpoint
    collections: list[str] = field(default_factory=list)  # exported besides the benchmarks' collections: videos only
    batch_size: PositiveInt = 32
    text_batch_size: PositiveInt = 256
    workers: NonNegativeInt = 1  # frame-decoding loader processes (per rank)
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"  # auto: cuda when available;
    # under torchrun each rank takes its local GPU
    codes: CodesParams = field(default_factory=CodesParams)  # compact codes beside each video export


def video_collections(benchmarks: dict[str, BenchmarkParams], params: ExportParams) -> list[str]:
    """The collections whose clips are exported: every benchmark's, then the search collections, each once."""
    return list(dict.fromkeys([entry.collection for entry in benchmarks.values()] + params.collections))


def export_model(
    name: str,
    checkpoint: str,
    benchmarks: dict[str, BenchmarkParams],
    params: ExportParams,
    out: Path,
    dist: DistInfo,
) -> dict[str, int]:
    """Every export of one model into ``out`` (the stage's temporary output folder); returns the counts."""
    model = load_video_clip(checkpoint)
    digest = file_digest(checkpoint)
    device = dist.device if dist.world_size > 1 else resolve_device(params.device)
    counts = {}
    for collection in video_collections(benchmarks, params):
        path = export_path(out, name, collection, VIDEO)
        counts[f"clips.{name}.{collection}"] = export_videos(
            model,
            checkpoint,
            Path(params.frames) / collection,
            path,
            collection,
            batch_size=params.batch_size,
            device=device,
            workers=params.workers,
            checkpoint_sha256=digest,
            dist=dist,
        )
        if params.codes.enabled and dist.rank == 0:
            export_codes(path, codes_path(path), params.codes)  # streamed: memory bounded at any gallery size
    for benchmark, entry in benchmarks.items():
        ids, texts = BENCHMARKS[benchmark].read_queries(entry)
        counts[f"texts.{name}.{benchmark}"] = export_texts(
            model,
            checkpoint,
            ids,
            texts,
            export_path(out, name, benchmark, TEXT),
            entry.collection,  # the collection the queries are for (the file is named after the benchmark)
            batch_size=params.text_batch_size,
            device=device,
            checkpoint_sha256=digest,
            dist=dist,
        )
    for key, count in counts.items():
        log.info("%s: %d", key, count)
    return counts


@contextlib.contextmanager
def output_folder(target: str, dist: DistInfo) -> Iterator[Path]:
    """The stage's temporary output folder, the same on every rank; rank 0 moves it onto ``target`` at the end."""
    if dist.rank != 0:
        yield Path(broadcast(None))
        return
    with atomic_path(target, directory=True) as out:
        broadcast(str(out))
        yield out


@stage_main
def main() -> None:
    params, args = stage_params("export", ExportParams, __doc__)
    read_settings(args.params)  # the tracking section, checked before any work
    benchmarks = frozen_benchmarks(args.params)
    require_frozen(benchmarks)
    dist = setup("gloo" if resolve_device(params.device).type == "cpu" else None)
    lead = dist.rank == 0
    with stage_run("export", args.params, lead=lead) as tracker:
        tracker.log_params(
            {**asdict(params), "benchmarks": {name: asdict(entry) for name, entry in benchmarks.items()}}
        )
        counts = {}
        with output_folder(params.out, dist) as out:
            for name, checkpoint in params.models.items():
                counts.update(export_model(name, checkpoint, benchmarks, params, out, dist))
        tracker.log_metrics(counts)
    cleanup()


if __name__ == "__main__":
    main()
