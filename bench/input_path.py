"""Input-path throughput: frames/s from JPEG frame shards to normalised tensors, against decoding video.

Training reads clips from frame shards through the DataLoader path of ``eva02at.train.data``: worker
processes decode JPEGs (``ClipPairs`` + ``collate``) into uint8 batches; the main process moves them to the
device and normalises there (``normalize``). What the shards replace is random access into the videos with
decord: ``eva02at.video.read_frames`` at jittered ``segment_indices`` of a random one-second segment, each
frame resized and cropped as the shards are (``eva02at.extract.resize_crop``).

The shards are built here, in a temporary directory, from the sample videos with ``eva02at.extract``, at each
``--size`` (224: real training JPEGs; 64: the demo's). Rows: JPEG decoding alone in one process (the per-core
rate a GPU node's cores multiply); the loader's uint8 batches with N workers (per-core rate: the total over
N); the same, moved to the device and normalised, at the largest N; decord; and with CUDA present, GPU JPEG
decoding (``torchvision.io.decode_jpeg``).

    python -m bench.input_path --size 224 64 --workers 0 1 2 --json input_path.json
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.utils.data import DataLoader
from torchvision.io import decode_jpeg

from bench.common import machine_info, median, synchronize, time_calls, write_json
from eva02at.annotations import cut_videos, read_video_list
from eva02at.extract import extract, resize_crop
from eva02at.shards import FrameShards, FrameSpec
from eva02at.train.data import ClipPairs, EpochBatches, collate, normalize
from eva02at.video import VideoDecodeError, open_video, read_frames, seconds_to_frames, segment_indices, video_info

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "ego4d"
# Frames per second the training step consumes at the throughput targets (clips/s x frames per clip).
TARGETS = {"B/16, 4 frames, 800 clips/s": 800 * 4, "B/16, 16 frames, 140 clips/s": 140 * 16}


def build_shards(video_dir: Path, out_dir: Path, spec: FrameSpec, clip_seconds: float, max_videos: int) -> FrameShards:
    """Cut the videos listed in ``clips.csv`` into ``clip_seconds`` clips and decode them into shards.

    A video that cannot be opened or decoded leaves error rows in the manifest, as in the real pipeline;
    only the clips that decoded are used.
    """
    files = read_video_list(video_dir / "clips.csv")[: max_videos or None]
    durations = {}
    for name in files:
        try:
            durations[name] = video_info(video_dir / name).duration
        except VideoDecodeError:
            durations[name] = math.nan
    segments = cut_videos(durations, clip_seconds)
    extract(segments, [], video_dir, out_dir, spec, workers=1, max_failure_fraction=1.0)
    return FrameShards(out_dir)


def shard_rate(shards: FrameShards, workers: int, args: argparse.Namespace, device: torch.device | None) -> float:
    """Frames/s of uint8 batches from DataLoader workers, after ``args.warmup`` batches.

    With a ``device`` each batch is also moved there and normalised (the step's input); without, the rate is
    the CPU side alone, which on a GPU node is all the cores do.
    """
    clip_ids = shards.clip_ids
    order = np.random.default_rng(0).integers(0, len(clip_ids), size=(args.warmup + args.batches, args.batch))
    pairs = [[(int(v), int(v)) for v in row] for row in order]  # (video, caption) index pairs
    loader = DataLoader(
        ClipPairs(shards, clip_ids, captions=clip_ids),
        batch_sampler=EpochBatches(pairs, epoch=0),
        collate_fn=collate,
        num_workers=workers,
        pin_memory=device is not None and device.type == "cuda",
    )
    sync = device or torch.device("cpu")
    frames_done, start = 0, 0.0
    for index, item in enumerate(loader):
        if index == args.warmup:
            synchronize(sync)
            start = time.perf_counter()
        frames = item["frames"]  # (B, T, 3, H, W) uint8
        if device is not None:
            frames = normalize(frames.to(device, non_blocking=True), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
        if index >= args.warmup:
            frames_done += frames.shape[0] * frames.shape[1]
    synchronize(sync)
    return frames_done / (time.perf_counter() - start)


def decode_rate(shards: FrameShards, clips: int, seed: int = 0) -> float:
    """Frames/s of ``ClipPairs`` items read in this process: JPEG decoding alone, on one core.

    The loader rows add what a loader adds (worker processes, transfer, collation; and normalisation, on
    the CPU here but on the GPU in training); this row is the per-core decoding rate a GPU node scales by.
    """
    clip_ids = shards.clip_ids
    dataset = ClipPairs(shards, clip_ids, captions=clip_ids)
    videos = np.random.default_rng(seed).integers(0, len(clip_ids), size=clips)
    frames = 0
    start = time.perf_counter()
    for video in videos:
        frames += dataset[(0, int(video), int(video))][0].shape[0]  # (T, 3, H, W)
    return frames / (time.perf_counter() - start)


def decord_rate(
    shards: FrameShards, video_dir: Path, clips: int, spec: FrameSpec, clip_seconds: float, seed: int = 0
) -> float:
    """Frames/s of random one-clip access into the videos on one core: open, seek, decode, resize, normalise.

    Only videos whose every clip decoded into the shards are used, so no decode error interrupts the timing.
    """
    manifest = shards.manifest.to_pandas()
    good = manifest.groupby("source")["status"].agg(lambda s: bool((s == "ok").all()))
    videos = sorted(good[good].index)
    rng = np.random.default_rng(seed)
    infos = {name: video_info(video_dir / name) for name in videos}
    start = time.perf_counter()
    for _ in range(clips):
        name = videos[rng.integers(len(videos))]
        info = infos[name]
        begin = rng.uniform(0.0, max(0.0, info.duration - clip_seconds))
        first, last = seconds_to_frames(begin, begin + clip_seconds, info.fps)
        indices = segment_indices(first, min(last, info.num_frames - 1), spec.num_frames, jitter=True, rng=rng)
        decoded = read_frames(video_dir / name, indices, reader=open_video(video_dir / name))
        frames = np.stack([resize_crop(frame, spec.size) for frame in decoded])  # (T, H, W, 3)
        # the same output as the shard path, made for its cost only
        normalize(torch.from_numpy(frames).permute(0, 3, 1, 2), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    return clips * spec.num_frames / (time.perf_counter() - start)


def gpu_jpeg_rate(shards: FrameShards, batch: int, repeats: int, device: torch.device) -> float:
    """Frames/s of nvJPEG batch decoding plus normalisation on the GPU, for the JPEGs of ``batch`` clips."""
    clip_ids = shards.clip_ids
    jpegs = [
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        for i in range(batch)
        for data in shards.jpegs(clip_ids[i % len(clip_ids)])
    ]

    def decode() -> None:
        frames = torch.stack(decode_jpeg(jpegs, device=device))  # (B*T, 3, H, W) uint8
        normalize(frames, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)

    return len(jpegs) / median(time_calls(decode, repeats, device, warmup=2))


def jpeg_bytes_per_frame(shards: FrameShards) -> float:
    sizes = [len(b) for clip in shards.clip_ids for b in shards.jpegs(clip)]
    return sum(sizes) / len(sizes)


def measure_size(args: argparse.Namespace, size: int, device: torch.device, tmp: Path) -> list[dict[str, Any]]:
    """The rows of one frame size: decoding alone, the loader per worker count, decord, nvJPEG on a GPU."""
    spec = FrameSpec(num_frames=args.frames, size=size)
    shards = build_shards(args.videos, tmp / f"frames-{size}", spec, args.clip_seconds, args.max_videos)
    rows = []

    def add(path: str, workers: int, measure_once: Callable[[int], float], repeats: int = args.repeats) -> None:
        rates = [measure_once(r) for r in range(repeats)]
        row = dict(size=size, frames_per_clip=args.frames, path=path, workers=workers, cores=max(1, workers))
        rows.append(row | {"rates": rates, "frames_per_s": median(rates)})

    add("decode only", 0, lambda seed: decode_rate(shards, args.batch * args.batches, seed))
    for workers in args.workers:
        add("loader", workers, lambda _, n=workers: shard_rate(shards, n, args, None))
    top = max(args.workers)
    add(f"loader + normalise ({device.type})", top, lambda _: shard_rate(shards, top, args, device))
    add("decord", 0, lambda seed: decord_rate(shards, args.videos, args.decord_clips, spec, args.clip_seconds, seed))
    if device.type == "cuda":
        add("nvjpeg (GPU)", 0, lambda _: gpu_jpeg_rate(shards, args.batch, 10, device), repeats=1)
    jpeg_bytes = jpeg_bytes_per_frame(shards)
    for row in rows:
        row["frames_per_s_per_core"] = row["frames_per_s"] / row["cores"]
        row["jpeg_bytes_per_frame"] = jpeg_bytes
        row["clips_in_shards"] = len(shards.clip_ids)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Markdown table, with the cores each path needs to feed the step at the throughput targets."""
    names = list(TARGETS)
    columns = ["size", "path", "workers", "frames/s", "frames/s per core", "KiB/frame"]
    columns += [f"cores for {n}" for n in names]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cores = " | ".join(f"{TARGETS[n] / r['frames_per_s_per_core']:.1f}" for n in names)
        lines.append(
            f"| {r['size']} | {r['path']} | {r['workers']} | {r['frames_per_s']:.0f} | "
            f"{r['frames_per_s_per_core']:.0f} | {r['jpeg_bytes_per_frame'] / 1024:.1f} | {cores} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=[224, 64], help="JPEG side(s) of the shards")
    parser.add_argument("--frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--batch", type=int, default=32, help="clips per batch")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first (worker start-up)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per row (the median is reported)")
    parser.add_argument("--decord-clips", type=int, default=30, help="random clips per decord measurement")
    parser.add_argument("--clip-seconds", type=float, default=1.0, help="clip length (EgoClip: about 1 s)")
    parser.add_argument("--videos", type=Path, default=SAMPLE, help="folder with clips.csv and the videos")
    parser.add_argument("--max-videos", type=int, default=0, help="use the first N videos only (0: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the result as JSON here; '-' for stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for size in args.size for row in measure_size(args, size, device, Path(tmp))]
    print(format_rows(rows))
    if args.json:
        config = vars(args) | {"videos": str(args.videos)}
        write_json({"machine": machine_info(device), "config": config, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
