"""``frames`` stage: decode one collection of clips into JPEG frame shards and a manifest.

Usage: ``python -m stages.frames <collection>``, the collection being a key of ``frames.collections``.
The decode summary (clips ok, failed and clamped, shards written and kept, seconds) is one MLflow run.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from eva02at.core.config import ConfigError, Fraction, NonNegativeInt, PositiveInt, from_dict
from eva02at.data.annotations import FormatParams, Source, format_params
from eva02at.data.extract import Summary, TooManyFailures, extract, ray_runner
from eva02at.data.formats.registered import FORMATS, read_segments
from eva02at.data.shards import FrameSpec
from stages.common import stage_main, stage_params
from stages.lineage import stage_run

log = logging.getLogger(__name__)


def registered_format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"not a registered annotation format; known: {sorted(FORMATS)}")
    return name


@dataclass
class Collection:
    """A ``frames.collections`` entry's keys common to every format; its format's own keys are its ``options``."""

    format: Annotated[str, AfterValidator(registered_format)]  # ek100 | egoclip | egomcq | charades | videolist
    annotations: str  # the annotation file (for videolist: a CSV with a ``file`` column)
    videos: str  # the folder the annotation's video paths are relative to
    num_frames: PositiveInt
    views: NonNegativeInt = 0  # 0: one view at the segment midpoints (evaluation); K: K jittered views (training)
    pattern: str | None = None  # video path from annotation fields; the format's layout by default


COMMON_KEYS = frozenset(item.name for item in fields(Collection))


def typed_collection(values: Any, where: str) -> tuple[Collection, FormatParams]:
    """A collections entry checked in two parts: the common keys, and the rest against its format's params
    (e.g. a video list's ``clip_seconds``); errors name ``where`` (the entry's key path)."""
    entry = values if isinstance(values, dict) else {}
    common = {k: v for k, v in entry.items() if k in COMMON_KEYS} if isinstance(values, dict) else values
    collection = from_dict(Collection, common, where)  # refuses an entry that is not a mapping of keys
    own = {k: v for k, v in entry.items() if k not in COMMON_KEYS}
    return collection, format_params(collection.format, own, where)


def typed_collections(params: FramesParams, params_file: str) -> dict[str, tuple[Collection, FormatParams]]:
    """Every collections entry typed (:func:`typed_collection`), so that a bad one stops any collection's stage."""
    return {
        name: typed_collection(values, f"{params_file}: frames.collections.{name}")
        for name, values in params.collections.items()
    }


@dataclass
class FramesParams:
    out: str
    size: PositiveInt
    jpeg_quality: Annotated[int, Field(ge=1, le=100)]
    seed: NonNegativeInt
    workers: PositiveInt
    clips_per_shard: PositiveInt
    max_failure_fraction: Fraction
    collections: dict[str, Any]  # name -> a Collection's keys and its format's own (typed_collection)
    train_aspect: Annotated[float, Field(ge=1)] = 1.0  # training collections: stored box size x round(size * this)
    ray_address: str | None = None  # auto, host:port or ray://host:port: shards on a Ray cluster; null: local


def frame_spec(params: FramesParams, collection: Collection) -> FrameSpec:
    """Training collections (views > 0) keep room for a random crop; evaluation ones are centre squares."""
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
    collection, options = typed_collections(params, args.params)[args.collection]
    spec = frame_spec(params, collection)
    source = Source(collection.annotations, collection.videos, collection.pattern, options)
    stage, out = f"frames@{args.collection}", Path(params.out) / args.collection
    execution = {"dvc.stage": stage, "frames.out": str(out.resolve()), "frames.host": socket.gethostname()}
    with stage_run(stage, args.params, execution=execution) as tracker:
        tracker.log_params(
            {"collection": asdict(collection) | asdict(options), "spec": asdict(spec), "workers": params.workers}
        )
        started = time.perf_counter()
        segments, row_errors = read_segments(collection.format, source)
        try:
            summary = extract(
                segments,
                row_errors,
                collection.videos,
                out,
                spec,
                workers=params.workers,
                clips_per_shard=params.clips_per_shard,
                max_failure_fraction=params.max_failure_fraction,
                runner=ray_runner(params.ray_address) if params.ray_address else None,
            )
        except TooManyFailures as err:
            tracker.log_metrics(summary_metrics(err.summary, time.perf_counter() - started))
            raise
        tracker.log_metrics(summary_metrics(summary, time.perf_counter() - started))


if __name__ == "__main__":
    main()
