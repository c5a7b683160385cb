"""``frames`` stage: decode one collection of clips into JPEG frame shards and a manifest.

Usage: ``python -m stages.frames <collection>``, the collection being a key of ``frames.collections``.
The decode summary (clips ok, failed and clamped, shards written and kept, seconds) is one MLflow run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from eva02at.annotations import FORMATS, Source, read_segments
from eva02at.config import ConfigError, from_dict
from eva02at.extract import Summary, TooManyFailures, extract
from eva02at.shards import FrameSpec
from eva02at.tracking import Tracker, read_settings
from stages.common import lineage_tags, stage_main, stage_params


@dataclass
class Collection:
    format: str  # a registered annotation format: ek100 | egoclip | egomcq | charades | videolist
    annotations: str  # the annotation file (for videolist: a CSV with a ``file`` column)
    videos: str  # the folder the annotation's video paths are relative to
    num_frames: int
    views: int = 0  # 0: one view at the segment midpoints (evaluation); K: K jittered views (training)
    pattern: str | None = None  # video path from annotation fields; the format's layout by default
    clip_seconds: float = 2.0  # videolist only: window length


@dataclass
class FramesParams:
    out: str
    size: int
    jpeg_quality: int
    seed: int
    workers: int
    clips_per_shard: int
    max_failure_fraction: float
    collections: dict
    train_aspect: float = 1.0  # training collections: stored box is size x round(size * train_aspect)


def frame_spec(params: FramesParams, collection: Collection) -> FrameSpec:
    """Training collections (views > 0) keep room for a random crop; evaluation ones are centre squares."""
    if params.train_aspect < 1:
        raise ConfigError(f"frames.train_aspect: {params.train_aspect} is below 1 (long side / short side)")
    aspect = params.train_aspect if collection.views > 0 else 1.0
    return FrameSpec(collection.num_frames, collection.views, params.size, params.jpeg_quality, params.seed, aspect)


def summary_metrics(summary: Summary, seconds: float) -> dict[str, float]:
    metrics = {
        "clips": summary.clips,
        "clips_ok": summary.ok,
        "clips_failed": summary.failed,
        "clips_clamped": sum(summary.clamped.values()),
        "shards_written": summary.written_shards,
        "shards_kept": summary.kept_shards,
        "seconds": seconds,
    }
    return metrics | {f"clamped.{reason}": n for reason, n in summary.clamped.items()}


@stage_main
def main() -> None:
    params, args = stage_params("frames", FramesParams, __doc__, positional=("collection",))
    if args.collection not in params.collections:
        raise ConfigError(f"frames.collections has no {args.collection!r}; known: {sorted(params.collections)}")
    where = f"frames.collections.{args.collection}"
    collection = from_dict(Collection, params.collections[args.collection], where)
    if collection.format not in FORMATS:
        raise ConfigError(f"{where}.format: unknown format {collection.format!r}; known: {sorted(FORMATS)}")
    spec = frame_spec(params, collection)
    source = Source(collection.annotations, collection.videos, collection.pattern, collection.clip_seconds)
    tracking, stage = read_settings(args.params), f"frames@{args.collection}"
    tags = lineage_tags(stage) if tracking.enabled else {}
    with Tracker(tracking.experiment, stage, tracking.uri, enabled=tracking.enabled, tags=tags) as tracker:
        tracker.log_params({"collection": asdict(collection), "spec": asdict(spec), "workers": params.workers})
        started = time.perf_counter()
        segments, row_errors = read_segments(collection.format, source)
        try:
            summary = extract(
                segments,
                row_errors,
                collection.videos,
                Path(params.out) / args.collection,
                spec,
                workers=params.workers,
                clips_per_shard=params.clips_per_shard,
                max_failure_fraction=params.max_failure_fraction,
            )
        except TooManyFailures as err:
            tracker.log_metrics(summary_metrics(err.summary, time.perf_counter() - started))
            raise
        tracker.log_metrics(summary_metrics(summary, time.perf_counter() - started))


if __name__ == "__main__":
    main()
