"""``export`` stage: video and text embeddings of every evaluation collection, for every model, to Parquet.

Writes ``<out>/<model>/<collection>_video.parquet`` (every clip that decoded), with ``export.codes`` its compact
codes ``<collection>_video.codes.parquet``, and, for collections with query texts,
``<out>/<model>/<collection>_text.parquet``. The whole output folder is replaced at the end, so an interrupted
run leaves the previous exports (or none), never a partial set. Launched with ``train_launcher``: under torchrun
every rank embeds its share of each collection and rank 0 writes the files a single process would. One MLflow
run "export" records the params, the lineage tags and how many clips and texts each export holds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from eva02at.atomic import atomic_path
from eva02at.codes import CodesConfig, codes_path, make_codes, write_codes
from eva02at.config import NonNegativeInt, PositiveInt
from eva02at.embeddings import TEXT, VIDEO, export_path, file_sha256, read_embeddings
from eva02at.evaluation import read_texts
from eva02at.inference import export_texts, export_videos, resolve_device
from eva02at.models import load_video_clip
from eva02at.tracking import Tracker, read_settings
from eva02at.train.distributed import DistInfo, broadcast, cleanup, setup
from stages.common import lineage_tags, stage_main, stage_params

log = logging.getLogger(__name__)


@dataclass
class ExportCollection:
    frames: str  # the frames stage's folder of the collection
    texts: str | None = None  # file of the query texts; None for uncaptioned collections
    text_format: Literal["ek100_sentences", "egomcq_queries", "charades_classes"] | None = None

    def __post_init__(self) -> None:
        if (self.texts is None) != (self.text_format is None):
            raise ValueError("give both texts and text_format, or neither")


@dataclass
class ExportParams:
    out: str
    models: dict[str, str]  # name (zero_shot, finetuned) -> video checkpoint
    collections: dict[str, ExportCollection]
    batch_size: PositiveInt = 32
    text_batch_size: PositiveInt = 256
    workers: NonNegativeInt = 1  # frame-decoding loader processes (per rank)
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"  # auto: cuda when available;
    # under torchrun each rank takes its local GPU
    codes: CodesConfig = field(default_factory=CodesConfig)  # compact codes beside each video export


def export_model(
    name: str,
    checkpoint: str,
    collections: dict[str, ExportCollection],
    params: ExportParams,
    out: Path,
    dist: DistInfo,
) -> dict[str, int]:
    """Every export of one model into ``out`` (the stage's temporary output folder); returns the counts."""
    model = load_video_clip(checkpoint)
    digest = file_sha256(checkpoint)
    device = dist.device if dist.world_size > 1 else resolve_device(params.device)
    counts = {}
    for collection, spec in collections.items():
        path = export_path(out, name, collection, VIDEO)
        counts[f"clips.{name}.{collection}"] = export_videos(
            model,
            checkpoint,
            spec.frames,
            path,
            collection,
            batch_size=params.batch_size,
            device=device,
            workers=params.workers,
            checkpoint_sha256=digest,
            dist=dist,
        )
        if params.codes.enabled and dist.rank == 0:
            videos = read_embeddings(path, VIDEO)
            write_codes(codes_path(path), make_codes(videos.ids, videos.vectors, videos.info, params.codes))
        if spec.texts is None:
            continue
        ids, texts = read_texts(spec.text_format or "", spec.texts)
        counts[f"texts.{name}.{collection}"] = export_texts(
            model,
            checkpoint,
            ids,
            texts,
            export_path(out, name, collection, TEXT),
            collection,
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
    dist = setup("gloo" if resolve_device(params.device).type == "cpu" else None)
    tracking = read_settings(args.params)
    lead = dist.rank == 0
    tags = lineage_tags("export") if lead else {}
    with Tracker(tracking.experiment, "export", tracking.uri, lead and tracking.enabled, tags) as tracker:
        tracker.log_params(asdict(params))
        counts = {}
        with output_folder(params.out, dist) as out:
            for name, checkpoint in params.models.items():
                counts.update(export_model(name, checkpoint, params.collections, params, out, dist))
        tracker.log_metrics(counts)
    cleanup()


if __name__ == "__main__":
    main()
