"""Where narrated actions sit inside synthetic videos, and per-item random streams.

Every video is planned before any pixel is drawn: a list of shots (frame spans with the caption
they show) separated by short idle gaps. Tables are written from the plan, and the renderer draws
from the same plan, so the two cannot disagree.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shot:
    """One action on screen: frames ``start`` (inclusive) to ``stop`` (exclusive), 0-based."""

    start: int
    stop: int
    verb_class: int
    noun_classes: tuple[int, ...]  # the first is the moving object, the rest stand still


@dataclass(frozen=True)
class VideoJob:
    """One video to render: its path under the output folder, its look and its shots."""

    path: str
    look: str  # key of the background (a participant, or the video itself)
    frames: int
    shots: tuple[Shot, ...]


def keyed_rng(seed: int, *keys: str) -> np.random.Generator:
    """A random stream fixed by the seed and names, independent of the order items are made in."""
    return np.random.default_rng([seed, *(zlib.crc32(key.encode()) for key in keys)])


def plan_spans(
    rng: np.random.Generator, count: int, fps: float, seconds: list[float], gap: list[float]
) -> tuple[list[tuple[int, int]], int]:
    """Frame spans of ``count`` consecutive actions with idle gaps before, between and after them.

    Returns the spans ``(start, stop)`` and the video's frame count. Every span has at least two
    frames, so that a change across frames exists.
    """
    spans, cursor = [], _frames(rng, gap, fps, 0)
    for _ in range(count):
        length = _frames(rng, seconds, fps, 2)
        spans.append((cursor, cursor + length))
        cursor += length + _frames(rng, gap, fps, 0)
    return spans, max(cursor, 1)


def chunk_sizes(rng: np.random.Generator, total: int, per_video: list[int]) -> list[int]:
    """Split ``total`` items into videos of ``per_video[0]..per_video[1]`` items (the last may be short)."""
    sizes = []
    while total > 0:
        size = min(int(rng.integers(per_video[0], per_video[1] + 1)), total)
        sizes.append(size)
        total -= size
    return sizes


def _frames(rng: np.random.Generator, seconds: list[float], fps: float, minimum: int) -> int:
    return max(round(rng.uniform(seconds[0], seconds[1]) * fps), minimum)
