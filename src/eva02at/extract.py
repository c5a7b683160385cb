"""Decode annotated clips once into frame shards: parallel over videos, resumable, failures recorded.

A collection is planned into shards of whole videos, so each worker opens a video once. Each shard's
frames and manifest part are written atomically and stamped with a hash of what they were planned from;
on restart a shard whose stamp still matches is kept. Every clip ends as a manifest row, "ok" or "error"
with the reason, and a summary says how many failed; the run fails only above a failure threshold.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zlib
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from eva02at.annotations import RowError, Segment
from eva02at.cluster import run_on_cluster
from eva02at.errors import PipelineError
from eva02at.shards import (
    MANIFEST,
    SHARDS,
    FrameSpec,
    manifest_metadata,
    read_manifest,
    write_manifest,
    write_shard,
)
from eva02at.video import VideoDecodeError, open_video, read_frames, seconds_to_frames, segment_indices

log = logging.getLogger(__name__)
PARTS = "parts"


@dataclass(frozen=True)
class Summary:
    clips: int
    ok: int
    failed: int
    kept_shards: int
    written_shards: int

    def __str__(self) -> str:
        return (
            f"{self.ok}/{self.clips} clips decoded, {self.failed} failed "
            f"({self.written_shards} shards written, {self.kept_shards} kept from an earlier run)"
        )


class TooManyFailures(PipelineError):
    """More clips failed than the configured threshold allows."""


def extract(
    segments: Sequence[Segment],
    row_errors: Sequence[RowError],
    video_root: str | Path,
    out_dir: str | Path,
    spec: FrameSpec,
    workers: int = 1,
    clips_per_shard: int = 256,
    max_failure_fraction: float = 0.05,
    ray_address: str | None = None,
) -> Summary:
    """Decode ``segments`` into ``out_dir/shards`` and write ``out_dir/manifest.parquet``.

    ``ray_address`` (``auto``, ``host:port``, ``ray://host:port``) runs the shards on a Ray cluster instead of
    ``workers`` local processes; the output is the same.
    """
    out_dir = Path(out_dir)
    (out_dir / SHARDS).mkdir(parents=True, exist_ok=True)
    (out_dir / PARTS).mkdir(parents=True, exist_ok=True)
    plan = _plan(segments, clips_per_shard)
    todo, kept = [], 0
    for index, group in enumerate(plan):
        name, stamp = f"shard-{index:05d}", _stamp(group, spec, video_root)
        part = out_dir / PARTS / f"{name}.parquet"
        if part.is_file() and manifest_metadata(part).get("stamp") == stamp:
            kept += 1
        else:
            todo.append((name, stamp, group))
    _remove_stale(out_dir, {f"shard-{i:05d}" for i in range(len(plan))})
    total = sum(len(g) for _, _, g in todo)
    with tqdm(total=total, unit="clip", desc=f"frames {out_dir.name}", smoothing=0.1) as bar:
        for count in _run(todo, str(video_root), out_dir, spec, workers, ray_address):
            bar.update(count)
    rows = [r for i in range(len(plan)) for r in read_manifest(out_dir / PARTS / f"shard-{i:05d}.parquet").to_pylist()]
    rows += [
        _error_row(Segment(f"{Path(e.file).name}:{e.line}", e.file, 0.0, 0.0, e.line), e.reason) for e in row_errors
    ]
    write_manifest(out_dir / MANIFEST, rows, spec.metadata())
    failed = [r for r in rows if r["status"] != "ok"]
    summary = Summary(len(rows), len(rows) - len(failed), len(failed), kept, len(todo))
    log.info("%s: %s", out_dir, summary)
    for row in failed:
        log.warning("failed clip %s (%s): %s", row["clip_id"], row["source"] or "annotation", row["error"])
    if rows and len(failed) / len(rows) > max_failure_fraction:
        raise TooManyFailures(
            f"{out_dir}: {len(failed)} of {len(rows)} clips failed, more than the allowed fraction "
            f"{max_failure_fraction}; decoded clips are kept, see {out_dir / MANIFEST}"
        )
    return summary


def _plan(segments: Sequence[Segment], clips_per_shard: int) -> list[list[Segment]]:
    """Whole videos per shard, in sorted video order, about ``clips_per_shard`` clips each."""
    by_video: dict[str, list[Segment]] = defaultdict(list)
    for segment in segments:
        by_video[segment.video].append(segment)
    plan: list[list[Segment]] = [[]]
    for video in sorted(by_video):
        if plan[-1] and len(plan[-1]) + len(by_video[video]) > clips_per_shard:
            plan.append([])
        plan[-1].extend(by_video[video])
    return [group for group in plan if group]


def _stamp(group: Sequence[Segment], spec: FrameSpec, video_root: str | Path) -> str:
    text = json.dumps([str(video_root), asdict(spec), [asdict(s) for s in group]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _remove_stale(out_dir: Path, names: set[str]) -> None:
    for folder, suffix in ((SHARDS, ".arrow"), (PARTS, ".parquet")):
        for path in (out_dir / folder).iterdir():
            if path.name.endswith(suffix) and path.name[: -len(suffix)] not in names:
                path.unlink()


def _run(todo: list, video_root: str, out_dir: Path, spec: FrameSpec, workers: int, ray_address: str | None = None):
    """Yield the clip count of each finished shard, in-process, from a pool of processes or from a Ray cluster."""
    if ray_address and todo:
        yield from _run_on_cluster(todo, video_root, out_dir, spec, ray_address)
        return
    if workers <= 1:
        for name, stamp, group in todo:
            yield _decode_shard(name, stamp, group, video_root, str(out_dir), spec)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_decode_shard, n, s, g, video_root, str(out_dir), spec) for n, s, g in todo]
        for future in as_completed(futures):
            yield future.result()


def _run_on_cluster(todo: list, video_root: str, out_dir: Path, spec: FrameSpec, address: str):
    """The shards as Ray tasks, with absolute paths: workers run elsewhere."""
    root, out = Path(video_root).absolute(), out_dir.absolute()
    calls = {name: (name, stamp, group, str(root), str(out), spec) for name, stamp, group in todo}
    yield from run_on_cluster(address, _decode_shard, calls, out, inputs=[root])


def _decode_shard(name: str, stamp: str, group: list[Segment], video_root: str, out_dir: str, spec: FrameSpec):
    """Decode one shard's clips; write its frames, then its manifest part (the part marks it finished)."""
    frames, manifest = [], []
    by_video: dict[str, list[Segment]] = defaultdict(list)
    for segment in group:
        by_video[segment.video].append(segment)
    for video, clips in by_video.items():
        path = Path(video_root) / video
        try:
            reader = open_video(path)
        except VideoDecodeError as err:
            manifest += [_error_row(c, err.reason) for c in clips]
            continue
        for clip in clips:
            try:
                views = _decode_clip(path, reader, clip, spec)
            except VideoDecodeError as err:
                manifest.append(_error_row(clip, err.reason))
                reader = _reopen(path)
                continue
            frames += [
                {"clip_id": clip.clip_id, "view": v, "frame_indices": idx, "jpeg": jpegs}
                for v, (idx, jpegs) in enumerate(views)
            ]
            manifest.append(_ok_row(clip, [idx for idx, _ in views], spec.size, f"{name}.arrow"))
    write_shard(Path(out_dir) / SHARDS / f"{name}.arrow", frames)
    write_manifest(Path(out_dir) / PARTS / f"{name}.parquet", manifest, {"stamp": stamp})
    return len(group)


def _reopen(path: Path):
    """A fresh reader after a decode error (the old one may be stuck mid-stream); None if it cannot open."""
    try:
        return open_video(path)
    except VideoDecodeError:
        return None


def _decode_clip(path: Path, reader, clip: Segment, spec: FrameSpec) -> list[tuple[list[int], list[bytes]]]:
    """Frame indices and JPEGs of every view of one clip."""
    if reader is None:
        raise VideoDecodeError(path, "cannot reopen after an earlier decode error")
    fps, count = float(reader.get_avg_fps()), len(reader)
    first, last = seconds_to_frames(clip.start, clip.end, fps)
    if last >= count:
        raise VideoDecodeError(
            path,
            f"segment {clip.start:.2f}-{clip.end:.2f} s (frames {first}-{last}) "
            f"is past the end of the video ({count} frames)",
        )
    if spec.views == 0:
        views = [segment_indices(first, last, spec.num_frames)]
    else:
        rng = np.random.default_rng([spec.seed, zlib.crc32(clip.clip_id.encode())])
        views = [segment_indices(first, last, spec.num_frames, jitter=True, rng=rng) for _ in range(spec.views)]
    wanted = sorted({i for view in views for i in view})
    decoded = dict(zip(wanted, read_frames(path, wanted, reader=reader), strict=True))
    jpeg = {i: encode_jpeg(resize_crop(decoded[i], spec.size), spec.jpeg_quality) for i in wanted}
    return [(view, [jpeg[i] for i in view]) for view in views]


def resize_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size`` (antialiased bilinear), then take the centred ``size`` square."""
    height, width = frame.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = Image.fromarray(frame).resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _ok_row(clip: Segment, indices: list[list[int]], size: int, shard: str) -> dict:
    return {
        **_base_row(clip),
        "frame_indices": indices,
        "height": size,
        "width": size,
        "status": "ok",
        "error": "",
        "shard": shard,
    }


def _error_row(clip: Segment, reason: str) -> dict:
    return {
        **_base_row(clip),
        "frame_indices": [],
        "height": 0,
        "width": 0,
        "status": "error",
        "error": reason,
        "shard": "",
    }


def _base_row(clip: Segment) -> dict:
    return {
        "clip_id": clip.clip_id,
        "source": clip.video,
        "line": clip.line,
        "start": clip.start,
        "end": clip.end,
        "text": clip.text,
    }
