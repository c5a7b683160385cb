"""Plain video lists (a CSV with a ``file`` column): uncaptioned videos cut into fixed windows."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from eva02at.core.config import PositiveFloat
from eva02at.core.errors import BadInput
from eva02at.data.annotations import (
    FormatParams,
    RowError,
    Segment,
    Segments,
    Source,
    needed_columns,
    read_rows,
    register_format,
    video_path,
)

log = logging.getLogger(__name__)

NAME = "videolist"
VIDEOLIST_NEEDED = ("file",)


@dataclass(frozen=True)
class VideoListParams(FormatParams):
    """``frames.collections.<name>`` keys of a video list."""

    clip_seconds: PositiveFloat = 2.0  # window length


@register_format(NAME, layout="{file}", params=VideoListParams)
def read_video_clips(source: Source) -> Segments:
    """Uncaptioned clips: the videos of a list (column ``file``) cut into ``clip_seconds`` windows."""
    from eva02at.data.video import VideoDecodeError, index_video  # the frames stage's own frame count and rate

    durations, errors = {}, []
    for line, row, problem in read_rows(source.annotations, needed_columns(VIDEOLIST_NEEDED, source.pattern)):
        try:
            if problem:
                raise ValueError(problem)
            video = _video_file(video_path(source.pattern, row))
        except ValueError as err:
            errors.append(RowError(source.annotations, line, str(err)))
            continue
        try:
            index = index_video(Path(source.videos) / video)
            durations[video] = index.num_frames / index.fps
        except VideoDecodeError as err:
            log.warning("%s: %s", source.annotations, err)
            durations[video] = math.nan
    return cut_videos(durations, source.options.clip_seconds), errors


def _video_file(video: str) -> str:
    """``video`` when it can name a file below the video folder (a decode failure is then reported against it)."""
    if not PurePosixPath(video).name.strip() or PurePosixPath(video).name in (".", ".."):
        raise ValueError(f"file {video!r} names no video file")
    return video


def read_video_list(csv_path: str | os.PathLike) -> list[str]:
    """Video files (column ``file``, relative to the video root) of an uncaptioned collection."""
    files = []
    for line, row, problem in read_rows(csv_path, VIDEOLIST_NEEDED):
        if problem:
            raise BadInput(f"{csv_path}:{line}: {problem}")
        files.append(row["file"])
    return files


def cut_videos(durations: dict[str, float], clip_seconds: float) -> list[Segment]:
    """Uncaptioned clips: each video cut into consecutive ``clip_seconds`` windows.

    ``durations`` maps video paths to seconds; a video whose duration is unknown (NaN: it could not be
    opened) gets one clip, so that decoding reports the failure against the file.
    """
    segments = []
    for video in sorted(durations):
        duration = durations[video]
        known = math.isfinite(duration)
        count = max(1, int(duration // clip_seconds)) if known else 1
        stem = Path(video).with_suffix("").as_posix().replace("/", "_")
        for k in range(count):
            start = k * clip_seconds
            end = min(start + clip_seconds, duration) if known else clip_seconds
            segments.append(Segment(f"{stem}_{k:04d}", video, start, end, 0))
    return segments
