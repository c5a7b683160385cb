"""``frames`` stage: decode one collection of clips into JPEG frame shards and a manifest.

Usage: ``python -m stages.frames <collection>``, the collection being a key of ``frames.collections``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from eva02at import annotations
from eva02at.config import from_dict
from eva02at.extract import extract
from eva02at.shards import FrameSpec
from eva02at.video import VideoDecodeError, video_info
from stages.common import stage_main, stage_params

log = logging.getLogger(__name__)
READERS = {
    "ek100": (annotations.read_ek100, "{participant_id}/{video_id}.MP4"),
    "egoclip": (annotations.read_egoclip, "{video_uid}.mp4"),
    "egomcq": (annotations.read_egomcq, "{video_uid}.mp4"),
    "charades": (annotations.read_charades, "{id}.mp4"),
}


@dataclass
class Collection:
    format: str  # ek100 | egoclip | egomcq | charades | videolist
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
    ray_address: str | None = None  # auto, host:port or ray://host:port: shards on a Ray cluster; null: local


def segments_of(name: str, collection: Collection):
    """The clips a collection asks for, and the annotation rows that could not become clips."""
    if collection.format == "videolist":
        durations = {}
        for file in annotations.read_video_list(collection.annotations):
            try:
                durations[file] = video_info(Path(collection.videos) / file).duration
            except VideoDecodeError as err:
                log.warning("%s: %s", name, err)
                durations[file] = math.nan
        return annotations.cut_videos(durations, collection.clip_seconds), []
    if collection.format not in READERS:
        raise ValueError(f"frames.collections.{name}.format: unknown format {collection.format!r}")
    reader, layout = READERS[collection.format]
    return reader(collection.annotations, collection.pattern or layout)


@stage_main
def main() -> None:
    params, args = stage_params("frames", FramesParams, __doc__, positional=("collection",))
    if args.collection not in params.collections:
        raise ValueError(f"frames.collections has no {args.collection!r}; known: {sorted(params.collections)}")
    collection = from_dict(Collection, params.collections[args.collection], f"frames.collections.{args.collection}")
    segments, row_errors = segments_of(args.collection, collection)
    spec = FrameSpec(collection.num_frames, collection.views, params.size, params.jpeg_quality, params.seed)
    extract(
        segments,
        row_errors,
        collection.videos,
        Path(params.out) / args.collection,
        spec,
        workers=params.workers,
        clips_per_shard=params.clips_per_shard,
        max_failure_fraction=params.max_failure_fraction,
        ray_address=params.ray_address,
    )


if __name__ == "__main__":
    main()
