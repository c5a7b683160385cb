"""Video decoding (decord) and the frame sampling rule of EVA02-AT and its peers.

Decoding happens once, in the ``frames`` stage; training and evaluation read JPEG shards instead, because
random access into long-GOP video yields tens of frames per second per core while JPEG decoding yields
thousands.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eva02at.errors import PipelineError


class VideoDecodeError(PipelineError):
    """A video could not be opened or decoded; carries the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def open_video(path: str | os.PathLike):
    import decord  # imported lazily: worker processes open their own readers

    if not os.path.isfile(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as err:  # decord raises its own error types
        raise VideoDecodeError(path, f"cannot open: {_first_line(err)}") from err


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame count, frame rate and size as the container reports them."""
    reader = open_video(path)
    height, width = reader[0].shape[:2] if len(reader) else (0, 0)
    return VideoInfo(len(reader), float(reader.get_avg_fps()), int(height), int(width))


def read_frames(path: str | os.PathLike, indices: Sequence[int], reader=None) -> np.ndarray:
    """The exact decoded frames at 0-based ``indices``: uint8 [T, H, W, 3], RGB, no resizing.

    ``reader`` lets a caller that reads many segments of one video keep the file open.
    """
    reader = reader if reader is not None else open_video(path)
    count = len(reader)
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise VideoDecodeError(path, f"frame {bad[0]} is past the end of the video ({count} frames)")
    try:
        return reader.get_batch(list(indices)).asnumpy()
    except Exception as err:
        raise VideoDecodeError(path, f"decoding frames {list(indices)} failed: {_first_line(err)}") from err


def segment_indices(
    start_frame: int,
    end_frame: int,
    num_frames: int,
    jitter: bool = False,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Frame indices for the inclusive segment [start_frame, end_frame] split into ``num_frames`` equal parts.

    Frame k covers the interval [k, k + 1). Without jitter each part contributes the frame under its midpoint
    (evaluation); with jitter a uniformly random point of the part (training), so that every frame of the
    segment is reachable and the expected position equals the midpoint.
    """
    if end_frame < start_frame:
        raise ValueError(f"empty segment [{start_frame}, {end_frame}]")
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if jitter and rng is None:
        raise ValueError("jitter needs an rng (numpy Generator) so that sampling is seeded")
    length = (end_frame - start_frame + 1) / num_frames
    offsets = rng.random(num_frames) if jitter else np.full(num_frames, 0.5)
    points = start_frame + (np.arange(num_frames) + offsets) * length
    return [min(end_frame, max(start_frame, math.floor(p))) for p in points]


def seconds_to_frames(start: float, end: float, fps: float) -> tuple[int, int]:
    """Inclusive 0-based frame span of the time span [start, end) at ``fps``."""
    first = math.floor(start * fps + 1e-6)
    last = math.ceil(end * fps - 1e-6) - 1
    return first, max(first, last)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:300] if text else type(err).__name__
