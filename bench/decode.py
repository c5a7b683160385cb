"""The frames stage's decode rate against the limit: decoding every frame of the same file once, on one core.

Input made here (cached in a temporary folder): an H.264 1920x1080 30 fps video of ``--seconds`` seconds with
a keyframe every ``--keyint`` seconds (one file per value), and an EgoClip table with a ``--clip-seconds`` clip
every ``--clip-every`` seconds (EgoClip's average density). Each file is measured side by side in one run:

- ``plain``: PyAV decodes every frame of the file, one thread, nothing converted (the limit: extracting frames
  spread over a video cannot beat decoding it once, except by skipping keyframe spans that hold no clip);
- ``stage``: the frames stage's unit of work, :func:`eva02at.data.extract.decode_shard`, on the clips of the file
  (index, seek, decode, scale, JPEG, shard and manifest part written).

Rates and ratios are per CPU second of the (single-threaded) process, the core time a cluster pays; wall-clock
seconds are reported beside them. Repeats alternate the order of the two measurements.

Usage: ``python -m bench.decode [--seconds 180] [--keyint 1 10] [--repeats 1] [--out result.json]`` (the
video's length is rounded up to whole 10-second pieces).
Encoding the input takes minutes once (libx264 ``superfast``: CABAC and B-frames as in camera footage; a
10-second piece is encoded and repeated, so content repeats but every frame is decoded).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
from PIL import Image

from bench.common import machine_info, median, write_json
from eva02at.data.annotations import Source
from eva02at.data.extract import ShardTask, decode_shard, finish, plan_shards
from eva02at.data.formats.registered import read_segments
from eva02at.data.shards import FrameShards, FrameSpec
from eva02at.data.video import index_video

T = TypeVar("T")
EGOCLIP_CLIPS, EGOCLIP_HOURS = 3.8e6, 2900  # EgoClip: clip-narration pairs, hours of video they come from
PIECE_SECONDS = 10  # encoded once, repeated


def make_video(path: Path, seconds: int, keyint: int, width: int, height: int, fps: int) -> None:
    """A smooth texture panned under the camera (about 6 Mb/s at 1080p), keyframes every ``keyint`` s."""
    piece = path.with_suffix(".piece.mp4")
    rng = np.random.default_rng(0)
    margin = max(width, height) // 4

    def texture(h: int, w: int) -> np.ndarray:
        small = rng.integers(0, 256, (h // 24 + 2, w // 24 + 2), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))

    luma = texture(height + 2 * margin, width + 2 * margin)
    chroma = [texture(height // 2 + margin, width // 2 + margin) for _ in range(2)]
    with av.open(str(piece), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        gop = str(keyint * fps)
        stream.options = {"preset": "superfast", "crf": "23", "g": gop, "keyint_min": gop, "sc_threshold": "0"}
        for k in range(min(seconds, PIECE_SECONDS) * fps):
            dx, dy = int(margin * (1 + np.sin(k / 40)) / 2) & ~1, int(margin * (1 + np.cos(k / 55)) / 2) & ~1
            planes = np.empty((height * 3 // 2, width), np.uint8)  # yuv420p: Y, then U and V a quarter each
            planes[:height] = luma[dy : dy + height, dx : dx + width]
            for i, plane in enumerate(chroma):
                part = plane[dy // 2 : dy // 2 + height // 2, dx // 2 : dx // 2 + width // 2]
                planes[height + i * height // 4 : height + (i + 1) * height // 4] = part.reshape(height // 4, width)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")))
        container.mux(stream.encode(None))
    _repeat(piece, path, -(-seconds // PIECE_SECONDS), min(seconds, PIECE_SECONDS))
    piece.unlink()


def _repeat(piece: Path, path: Path, times: int, piece_seconds: int) -> None:
    """Concatenate ``times`` copies of ``piece`` by copying packets with shifted timestamps (no re-encoding)."""
    with av.open(str(piece)) as source, av.open(str(path.with_suffix(".tmp.mp4")), "w") as target:
        stream = source.streams.video[0]
        out = target.add_stream_from_template(stream)
        packets = [p for p in source.demux(stream) if p.size]
        step = round(piece_seconds / stream.time_base)
        for k in range(times):
            for packet in packets:
                copy = av.Packet(bytes(packet))
                copy.pts, copy.dts, copy.duration = packet.pts + k * step, packet.dts + k * step, packet.duration
                copy.is_keyframe, copy.time_base, copy.stream = packet.is_keyframe, packet.time_base, out
                target.mux(copy)
    path.with_suffix(".tmp.mp4").replace(path)


def write_egoclip(path: Path, video_uid: str, seconds: float, every: float, length: float) -> int:
    """An EgoClip table (tab-separated) with a ``length``-second clip every ``every`` seconds."""
    starts = np.arange(0.0, seconds - length, every)
    lines = ["video_uid\tclip_start\tclip_end\tclip_text"]
    lines += [f"{video_uid}\t{s:.3f}\t{s + length:.3f}\t#C C does thing {k}" for k, s in enumerate(starts)]
    path.write_text("\n".join(lines) + "\n")
    return len(starts)


def plain_decode(path: Path) -> int:
    """Decode every frame, one thread, nothing converted: the rate the stage is measured against."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return sum(1 for _ in container.decode(stream))


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """``fn()`` with its wall-clock and CPU seconds (one thread: CPU time is the core time it costs, and it
    holds steady on a shared machine where wall-clock time does not)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def measure_file(video: Path, table: Path, spec: FrameSpec, repeats: int, work: Path) -> dict:
    segments, errors = read_segments("egoclip", Source(str(table), str(video.parent), "{video_uid}.mp4"))
    assert not errors, errors
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "stage": []}
    for repeat in range(repeats):
        (task,) = plan_shards(segments, video.parent, work / f"{video.stem}-{repeat}", spec, len(segments))
        runs = {"plain": lambda: plain_decode(video), "stage": lambda task=task: decode_shard(task)}
        for name in sorted(runs, reverse=repeat % 2 == 1):  # alternate the order between repeats
            value, wall, cpu = timed(runs[name])
            times[name].append((wall, cpu))
            if name == "plain":
                frames = value
            else:
                assert value.failed == 0, f"{value.failed} clips failed"
    plain_wall, plain_cpu = (median([t[k] for t in times["plain"]]) for k in (0, 1))
    stage_wall, stage_cpu = (median([t[k] for t in times["stage"]]) for k in (0, 1))
    video_hours_per_core_hour = frames / 30.0 / stage_cpu
    return {
        "clips": len(segments),
        "video_frames": frames,
        "plain_cpu_seconds": plain_cpu,
        "plain_wall_seconds": plain_wall,
        "plain_frames_per_s": frames / plain_cpu,
        "stage_cpu_seconds": stage_cpu,
        "stage_wall_seconds": stage_wall,
        "stage_clips_per_s": len(segments) / stage_cpu,
        "stage_video_frames_per_s": frames / stage_cpu,
        "ratio_to_plain": plain_cpu / stage_cpu,
        "ratio_to_plain_wall": plain_wall / stage_wall,
        "egoclip_core_hours": EGOCLIP_HOURS / video_hours_per_core_hour,
        "egoclip_core_hours_at_plain_rate": EGOCLIP_HOURS / (frames / 30.0 / plain_cpu),
        **shard_bytes(task, len(segments)),
    }


def shard_bytes(task: ShardTask, clips: int) -> dict:
    """Bytes per clip: the shard as written (frames shared by views once) and as if every view kept its own."""
    finish([task], [], task.out_dir, task.spec, written=1, max_failure_fraction=0.0)
    out = Path(task.out_dir)
    shards = FrameShards(out)
    per_view = sum(len(b) for c in shards.clip_ids for v in range(shards.num_views(c)) for b in shards.jpegs(c, v))
    distinct = sum((out / "shards" / name).stat().st_size for name in shards.shard_names)
    return {"shard_bytes_per_clip": distinct / clips, "bytes_per_clip_one_copy_per_view": per_view / clips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--keyint", type=int, nargs="+", default=[1, 10], help="keyframe intervals, seconds")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--aspect", type=float, default=1.7778, help="stored box of training collections")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--clip-every", type=float, default=2.7)
    parser.add_argument("--clip-seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "eva02at-bench-decode"))
    parser.add_argument("--out", default="-")
    args = parser.parse_args()
    write_json(run(args), args.out)


def run(args: argparse.Namespace) -> dict:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    spec = FrameSpec(args.frames, args.views, args.size, seed=0, aspect=args.aspect)
    videos = {}
    for keyint in args.keyint:  # encoded with every core, before the measurement is pinned to one
        name = f"{args.width}x{args.height}_{args.seconds}s_key{keyint}s"
        videos[keyint] = cache / f"{name}.mp4"
        if not videos[keyint].is_file():
            make_video(videos[keyint], args.seconds, keyint, args.width, args.height, fps=30)
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    if cores:
        os.sched_setaffinity(0, {min(cores)})
    try:
        result = {"machine": machine_info(), "spec": vars(args), "files": {}}
        with tempfile.TemporaryDirectory() as work:
            for keyint, video in videos.items():
                table = Path(work) / f"egoclip_{keyint}.tsv"
                seconds = index_video(video).num_frames / 30.0  # --seconds rounded up to whole pieces
                write_egoclip(table, video.stem, seconds, args.clip_every, args.clip_seconds)
                measured = measure_file(video, table, spec, args.repeats, Path(work))
                result["files"][f"keyframe every {keyint} s"] = measured
    finally:
        if cores:
            os.sched_setaffinity(0, cores)
    return result


if __name__ == "__main__":
    main()
