"""``export`` stage: video and text embeddings of every evaluation collection, for every model, to Parquet.

Writes ``<out>/<model>/<collection>_video.parquet`` (every clip that decoded) and, for collections with
query texts, ``<out>/<model>/<collection>_text.parquet``. The whole output folder is replaced at the end,
so an interrupted run leaves the previous exports (or none), never a partial set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from eva02at.atomic import atomic_path
from eva02at.config import from_dict
from eva02at.embeddings import TEXT, VIDEO, export_path, file_sha256
from eva02at.evaluation import read_texts
from eva02at.inference import export_texts, export_videos, resolve_device
from eva02at.models import load_video_clip
from stages.common import stage_main, stage_params

log = logging.getLogger(__name__)


@dataclass
class ExportCollection:
    frames: str  # the frames stage's folder of the collection
    texts: str | None = None  # file of the query texts; None for uncaptioned collections
    text_format: str | None = None  # ek100_sentences | egomcq_queries | charades_classes


@dataclass
class ExportParams:
    out: str
    models: dict  # name (zero_shot, finetuned) -> video checkpoint
    collections: dict  # name -> ExportCollection fields
    batch_size: int = 32
    text_batch_size: int = 256
    workers: int = 1  # frame-decoding loader processes
    device: str = "auto"  # auto: cuda when available


def export_model(
    name: str, checkpoint: str, collections: dict[str, ExportCollection], params: ExportParams, out: Path
) -> None:
    """Every export of one model into ``out`` (the stage's temporary output folder)."""
    model = load_video_clip(checkpoint)
    digest, device = file_sha256(checkpoint), resolve_device(params.device)
    for collection, spec in collections.items():
        count = export_videos(
            model,
            checkpoint,
            spec.frames,
            export_path(out, name, collection, VIDEO),
            collection,
            batch_size=params.batch_size,
            device=device,
            workers=params.workers,
            checkpoint_sha256=digest,
        )
        log.info("%s: %d %s clips", name, count, collection)
        if spec.texts is None:
            continue
        ids, texts = read_texts(spec.text_format or "", spec.texts)
        count = export_texts(
            model,
            checkpoint,
            ids,
            texts,
            export_path(out, name, collection, TEXT),
            collection,
            batch_size=params.text_batch_size,
            device=device,
            checkpoint_sha256=digest,
        )
        log.info("%s: %d %s texts", name, count, collection)


@stage_main
def main() -> None:
    params, _ = stage_params("export", ExportParams, __doc__)
    collections = {
        name: from_dict(ExportCollection, values, f"export.collections.{name}")
        for name, values in params.collections.items()
    }
    for name, spec in collections.items():
        if (spec.texts is None) != (spec.text_format is None):
            raise ValueError(f"export.collections.{name}: give both texts and text_format, or neither")
    with atomic_path(params.out, directory=True) as out:
        for name, checkpoint in params.models.items():
            export_model(name, checkpoint, collections, params, out)


if __name__ == "__main__":
    main()
