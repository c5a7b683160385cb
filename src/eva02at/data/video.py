"""Video decoding and the frame sampling rule of EVA02-AT and its peers.

Decoding happens once, in the ``frames`` stage; training and evaluation read JPEG shards instead, because
random access into long-GOP video yields tens of frames per second per core while JPEG decoding yields
thousands. The stage decodes with :func:`scaled_frames`: one forward pass over a video (PyAV), keyframe spans
that hold no wanted frame skipped, each wanted frame decoded once and shrunk by FFmpeg's scaler on the way
out. :func:`read_frames` (decord, exact full-size frames at any indices) is the per-clip reference reader.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from eva02at.core.errors import PipelineError


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
        raise VideoDecodeError(path, f"cannot open: {decoder_message(err)}") from err


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
        raise VideoDecodeError(path, f"decoding frames {list(indices)} failed: {decoder_message(err)}") from err


@dataclass(frozen=True)
class FrameIndex:
    """Where every frame of a video sits in its stream, read from the packets alone (nothing decoded).

    Frame k is the k-th frame in presentation order, as for :func:`read_frames`. A keyframe span is a keyframe
    packet and the packets that follow it in decode order up to the next keyframe; a span that holds no wanted
    frame is not decoded, and a pass starts by seeking to the first wanted span.
    """

    fps: float
    pts: np.ndarray  # (frames,) presentation timestamp of each frame
    span: np.ndarray  # (frames,) keyframe span of each frame's packet
    key_times: np.ndarray  # (spans,) timestamp of each span's keyframe packet, where a pass seeks to
    open_spans: frozenset[int]  # spans whose frames may reference the span before (open GOPs)

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def spans_for(self, frames: Sequence[int]) -> set[int]:
        """The keyframe spans to decode so that ``frames`` come out right."""
        spans = {int(self.span[f]) for f in frames}
        return spans | {s - 1 for s in spans if s in self.open_spans and s > 0}


def _open_stream(path: str | os.PathLike):
    """An open PyAV container and its first video stream, decoded on one thread."""
    import av  # imported lazily: worker processes open their own containers

    if not os.path.isfile(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file")
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise VideoDecodeError(path, f"cannot open: {decoder_message(err)}") from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1  # one core per worker: cores scale by processes
    return container, stream


def _packet_time(packet) -> int | None:
    return packet.pts if packet.pts is not None else packet.dts


def index_video(path: str | os.PathLike) -> FrameIndex:
    """The frame index of a video: timestamps, keyframe spans and frame rate, from one pass over its packets."""
    import av

    container, stream = _open_stream(path)
    with container:
        times, spans, keys, open_spans = [], [], [], set()
        try:
            for packet in container.demux(stream):
                time = _packet_time(packet)
                if packet.size == 0:
                    continue
                if time is None:
                    raise VideoDecodeError(path, f"packet {len(times)} has no timestamp")
                if packet.is_keyframe or not keys:
                    keys.append(time)
                elif time < keys[-1]:
                    open_spans.add(len(keys) - 1)
                times.append(time)
                spans.append(len(keys) - 1)
        except av.FFmpegError as err:
            raise VideoDecodeError(path, f"cannot read packets: {decoder_message(err)}") from err
        rate = stream.average_rate or stream.guessed_rate
        seconds = float(stream.duration * stream.time_base) if stream.duration else 0.0
    if not times:
        raise VideoDecodeError(path, "no frames")
    order = np.argsort(np.array(times), kind="stable")
    fps = float(rate) if rate else len(times) / (seconds or 1.0)
    return FrameIndex(fps, np.array(times)[order], np.array(spans)[order], np.array(keys), frozenset(open_spans))


def _span_packets(container, stream, index: FrameIndex, first: int) -> Iterator[tuple[int, object]]:
    """(keyframe span, packet) from span ``first`` (or an earlier one) to the end of the stream.

    Seeks to the span's keyframe when it can; if the container lands anywhere but on a known keyframe at or
    before it, reads from the start instead, so a seek can cost time but never a frame.
    """
    if first > 0:
        container.seek(int(index.key_times[first]), stream=stream, backward=True)
        packets = (p for p in container.demux(stream) if p.size)
        head = next(packets, None)
        landed = np.flatnonzero(index.key_times == _packet_time(head)) if head is not None and head.is_keyframe else []
        if len(landed) and landed[0] <= first:
            span = int(landed[0])
            yield span, head
            for packet in packets:
                span += bool(packet.is_keyframe)
                yield span, packet
            return
        container.seek(0, stream=stream, backward=True)
    span = -1
    for packet in container.demux(stream):
        if packet.size:
            span += bool(packet.is_keyframe or span < 0)
            yield span, packet


def scaled_size(height: int, width: int, box_height: int, box_width: int) -> tuple[int, int]:
    """The (height, width) a frame is resized to so that it covers the box, keeping its aspect ratio."""
    scale = max(box_height / height, box_width / width)
    return max(box_height, round(height * scale)), max(box_width, round(width * scale))


def scaled_frames(
    path: str | os.PathLike, index: FrameIndex, frames: Sequence[int], height: int, width: int
) -> Iterator[tuple[int, np.ndarray | str]]:
    """Each wanted frame once, resized to cover ``height`` x ``width`` and centre-cropped: (frame, uint8 RGB).

    One forward pass: it seeks to the first keyframe span holding a wanted frame, does not decode spans that
    hold none, and stops after the last one; FFmpeg's scaler (swscale, bilinear) shrinks each kept frame while
    converting it to RGB, so no full-size RGB frame is made. A frame that cannot be decoded comes out as
    (frame, reason): after a decoder error the rest of its keyframe span is unreliable and is not used.
    """
    import av
    from av.video.reformatter import VideoReformatter

    wanted = {int(index.pts[f]): f for f in sorted(set(frames))}
    spans = index.spans_for(list(wanted.values()))
    error, current, decoding = "", -1, False
    container, stream = _open_stream(path)
    decoder, scaler = stream.codec_context, VideoReformatter()

    def emit(decoded) -> Iterator[tuple[int, np.ndarray]]:
        for frame in decoded:
            if frame.pts in wanted:
                yield wanted.pop(frame.pts), _scale_crop(scaler, frame, height, width)

    with container:
        for span, packet in _span_packets(container, stream, index, min(spans, default=0)):
            if span > max(spans, default=-1) or not wanted:
                break
            if span != current:
                if decoding and span not in spans:  # leaving a wanted span: drain it, reset the decoder
                    yield from emit(_drain(decoder))
                current, decoding = span, span in spans
            if not decoding:
                continue
            try:
                yield from emit(decoder.decode(packet))
            except av.FFmpegError as err:  # the rest of this span references a broken picture
                error = error or f"decoder error at timestamp {packet.pts}: {decoder_message(err)}"
                decoding = False
                yield from emit(_drain(decoder))
        if decoding and wanted:
            yield from emit(_drain(decoder))
    for frame in wanted.values():
        yield frame, f"frame {frame} could not be decoded" + (f" ({error})" if error else "")


def _drain(decoder) -> list:
    """The frames still inside the decoder, which is then reset for the next keyframe span."""
    import av

    try:
        frames = decoder.decode(None)
    except av.FFmpegError:
        frames = []
    decoder.flush_buffers()
    return frames


def _scale_crop(scaler, frame, height: int, width: int) -> np.ndarray:
    """swscale's bilinear resize straight from the decoder's YUV to RGB, then the centred box."""
    new_h, new_w = scaled_size(frame.height, frame.width, height, width)
    rgb = scaler.reformat(
        frame, new_w, new_h, "rgb24", src_colorspace="ITU601", interpolation="BILINEAR", threads=1
    ).to_ndarray()  # (new_h, new_w, 3)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return rgb[top : top + height, left : left + width]


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


def decoder_message(err: BaseException) -> str:
    """The last line of a decoder's error, without what changes from run to run.

    decord prefixes its messages with the time of day and source locations, FFmpeg with object addresses;
    manifests store these messages and must be byte-identical across runs.
    """
    lines = str(err).strip().splitlines()
    text = lines[-1] if lines else type(err).__name__
    text = _CLOCK.sub("", text)
    text = _SOURCE_LOCATION.sub("", text)
    text = _ADDRESS.sub("0x?", text)
    return " ".join(text.split())[:300] or type(err).__name__


_CLOCK = re.compile(r"\[\d{1,2}:\d{2}:\d{2}(\.\d+)?\]\s*")  # [02:00:19]
_SOURCE_LOCATION = re.compile(r"\S+\.(cc|cpp|c|h|hpp):\d+:\s*")  # /src/video/ffmpeg/threaded_decoder.cc:218:
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")  # [h264 @ 0x55e07adb4f40]
