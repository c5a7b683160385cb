"""Input-path throughput: frames/s from JPEG frame shards to model inputs, against the JPEG decoder alone.

Training reads clips from frame shards through the DataLoader path of ``eva02at.train.data``: worker
processes decode JPEGs straight into the batch and tokenize the captions (``ClipPairs`` + ``Collate``); the
training process moves the uint8 batch to the device, where each clip is cropped to its box, resized and
normalised (``clip_frames``). The yardstick is ``torchvision.io.decode_jpeg`` alone on the same frames in one
process (target: the loader's frames/s per core at 0.95 of it or more); beside it, the loader's decoder
(simplejpeg) alone, in its own memory and, as the loader calls it, through ``decode_jpegs`` straight into the
batch.
What the shards replace is random access into the videos with decord: ``eva02at.data.video.read_frames`` at
jittered ``segment_indices`` of a random one-second segment, each frame resized and cropped as the shards are.

The crop rows time ``crop_resize`` per clip on the device, on frames of ``--size`` x ``--size * --aspect``
(training collections keep room to crop), with RandomResizedCrop boxes, with the centred square
(augmentation off), and, for comparison, torchvision's ``roi_align`` over the same boxes in one call.

The shards are built here, in a temporary directory, from the sample videos with ``eva02at.data.extract``, at each
``--size`` (224: real training JPEGs; 64: the demo's). Measurements are interleaved (one of each row per
repeat), so that a busy machine slows every row alike. With CUDA present, GPU JPEG decoding of packed
batches (``device_frames``, nvJPEG) is a row too.

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
import open_clip
import simplejpeg
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

from bench.common import machine_info, median, synchronize, time_calls, write_json
from eva02at.data.extract import extract, resize_crop
from eva02at.data.formats.videolist import cut_videos, read_video_list
from eva02at.data.jpeg import decode_jpegs
from eva02at.data.pixels import normalize
from eva02at.data.shards import FrameShards, FrameSpec
from eva02at.data.video import VideoDecodeError, open_video, read_frames, seconds_to_frames, segment_indices, video_info
from eva02at.train.augment import AugmentParams, crop_boxes, crop_resize
from eva02at.train.data import (
    ClipPairs,
    Collate,
    EpochBatches,
    clip_frames,
    device_frames,
    pack_jpegs,
    recycle_frames,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "ego4d"
TOKENIZER = "EVA02-B-16"  # the captions are tokenized in the workers, as in training
# Frames per second the training step consumes at the throughput targets (clips/s x frames per clip).
TARGETS = {"B/16, 4 frames, 800 clips/s": 800 * 4, "B/16, 16 frames, 140 clips/s": 140 * 16}
YARDSTICK = "decode_jpeg alone"


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


def clip_order(shards: FrameShards, args: argparse.Namespace) -> np.ndarray:
    """The clips of every measurement, (warmup + batches, batch) indices: the same frames for every row."""
    return np.random.default_rng(0).integers(0, len(shards.clip_ids), size=(args.warmup + args.batches, args.batch))


def loader_rate(
    shards: FrameShards, workers: int, args: argparse.Namespace, device: torch.device | None, recycle: bool = True
) -> float:
    """Frames/s of training batches from DataLoader workers, after ``args.warmup`` batches.

    With a ``device`` each batch also becomes model input there (``clip_frames``: crop box, resize, normalise);
    without, the rate is the workers' side alone, which on a GPU node is all the CPU cores do. Without
    ``recycle`` no batch is released, so workers write every batch into fresh shared memory, as torch's
    default collate does.
    """
    clip_ids = shards.clip_ids
    pairs = [[(int(v), int(v)) for v in row] for row in clip_order(shards, args)]  # (video, caption) pairs
    loader = DataLoader(
        ClipPairs(shards, clip_ids, captions=shards.texts(clip_ids)),
        batch_sampler=EpochBatches(pairs, epoch=0),
        collate_fn=Collate(open_clip.get_tokenizer(TOKENIZER)),
        num_workers=workers,
        pin_memory=device is not None and device.type == "cuda",
    )
    sync = device or torch.device("cpu")
    frames_done, start = 0, 0.0
    for index, batch in enumerate(loader):
        if index == args.warmup:
            synchronize(sync)
            start = time.perf_counter()
        frames = batch["frames"]  # (B, T, 3, H, W) uint8
        if device is not None:
            size = min(frames.shape[-2:])
            frames = clip_frames(batch, device, size, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, AugmentParams())
        if index >= args.warmup:
            frames_done += frames.shape[0] * frames.shape[1]
        if recycle:
            recycle_frames(batch)  # as the training step does
    synchronize(sync)
    return frames_done / (time.perf_counter() - start)


def timed_clips(shards: FrameShards, args: argparse.Namespace) -> list[list[bytes]]:
    """The JPEG bytes of the timed batches' clips, read beforehand."""
    clip_ids = shards.clip_ids
    return [shards.jpegs(clip_ids[video]) for row in clip_order(shards, args)[args.warmup :] for video in row]


def decoder_rate(shards: FrameShards, args: argparse.Namespace) -> float:
    """Frames/s of ``torchvision.io.decode_jpeg`` alone in this process, on the timed batches' frames
    (their bytes wrapped in tensors beforehand): the yardstick of the loader rows."""
    jpegs = [
        torch.frombuffer(bytearray(data), dtype=torch.uint8) for clip in timed_clips(shards, args) for data in clip
    ]
    start = time.perf_counter()
    for data in jpegs:
        decode_jpeg(data, mode=ImageReadMode.RGB)
    return len(jpegs) / (time.perf_counter() - start)


def simplejpeg_rate(shards: FrameShards, args: argparse.Namespace) -> float:
    """Frames/s of the loader's decoder alone on the same frames, each into memory of its own."""
    jpegs = [data for clip in timed_clips(shards, args) for data in clip]
    start = time.perf_counter()
    for data in jpegs:
        simplejpeg.decode_jpeg(data, colorspace="RGB")
    return len(jpegs) / (time.perf_counter() - start)


def decode_jpegs_rate(shards: FrameShards, args: argparse.Namespace) -> float:
    """Frames/s of the loader's ``decode_jpegs`` on the same frames, straight into one reused clip buffer:
    the decoding of a batch without the loader's other work."""
    clips = timed_clips(shards, args)
    out = decode_jpegs(clips[0])  # (T, H, W, 3)
    start = time.perf_counter()
    for jpegs in clips:
        decode_jpegs(jpegs, out=out)
    return len(clips) * len(out) / (time.perf_counter() - start)


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
    """Frames/s of the training path's batched GPU decoding (``device_frames`` of packed JPEGs, nvJPEG)."""
    clip_ids = shards.clip_ids
    packed = pack_jpegs([shards.jpegs(clip_ids[i % len(clip_ids)]) for i in range(batch)])
    frames = len(packed["jpeg_offsets"]) - 1
    return frames / median(time_calls(lambda: device_frames(packed, device), repeats, device, warmup=2))


def crop_rates(args: argparse.Namespace, size: int, device: torch.device) -> dict[str, Callable[[], float]]:
    """Frames/s of the crop + resize on ``device`` for uint8 batches of ``size`` x ``size * aspect`` frames in
    the decoder's memory order (the cost does not depend on the pixels, so they are random)."""
    width = round(size * args.aspect)
    shape = (args.batch, args.frames, size, width, 3)
    frames = torch.randint(0, 256, shape, dtype=torch.uint8).to(device).permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W)
    videos = list(range(args.batch))
    random_boxes = crop_boxes(videos, 0, size, width, AugmentParams(), seed=0)
    centre_boxes = crop_boxes(videos, 0, size, width, None, seed=0)

    def rate(fn: Callable[[], Any]) -> Callable[[], float]:
        return lambda: args.batch * args.frames / median(time_calls(fn, 3, device, warmup=1))

    return {
        "crop + resize (augment)": rate(lambda: crop_resize(frames, random_boxes, size)),
        "centre crop (augment off)": rate(lambda: crop_resize(frames, centre_boxes, size)),
        "roi_align (alternative)": rate(lambda: roi_align_crop(frames, random_boxes, size)),
    }


def roi_align_crop(frames: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]], size: int) -> torch.Tensor:
    """The same crops with one ``roi_align`` call (area-averaged samples, not antialiased bilinear)."""
    batch, count = frames.shape[:2]
    flat = frames.flatten(0, 1).float()  # (B*T, 3, H, W)
    rois = torch.tensor(
        [
            [b * count + t, left, top, left + w, top + h]
            for b, (top, left, h, w) in enumerate(boxes)
            for t in range(count)
        ],
        dtype=torch.float32,
        device=frames.device,
    )  # (B*T, 5): frame index, x1, y1, x2, y2
    return roi_align(flat, rois, size, aligned=True).unflatten(0, (batch, count))  # (B, T, 3, size, size)


def measure_size(args: argparse.Namespace, size: int, device: torch.device, tmp: Path) -> list[dict[str, Any]]:
    """The rows of one frame size, measured interleaved ``args.repeats`` times."""
    spec = FrameSpec(num_frames=args.frames, size=size)
    shards = build_shards(args.videos, tmp / f"frames-{size}", spec, args.clip_seconds, args.max_videos)
    top = max(args.workers)
    rows: dict[tuple[str, int], Callable[[], float]] = {(YARDSTICK, 0): lambda: decoder_rate(shards, args)}
    rows[("simplejpeg alone", 0)] = lambda: simplejpeg_rate(shards, args)
    rows[("decode_jpegs into the batch", 0)] = lambda: decode_jpegs_rate(shards, args)
    for workers in args.workers:
        rows[("loader", workers)] = lambda n=workers: loader_rate(shards, n, args, None)
    rows[("loader, fresh shared memory", 1)] = lambda: loader_rate(shards, 1, args, None, recycle=False)
    rows[(f"loader + crop + normalise ({device.type})", top)] = lambda: loader_rate(shards, top, args, device)
    rows[("decord", 0)] = lambda: decord_rate(shards, args.videos, args.decord_clips, spec, args.clip_seconds)
    rows.update({(path, 0): fn for path, fn in crop_rates(args, size, device).items()})
    if device.type == "cuda":
        rows[("nvjpeg batch (GPU)", 0)] = lambda: gpu_jpeg_rate(shards, args.batch, 10, device)
    rates: dict[tuple[str, int], list[float]] = {key: [] for key in rows}
    for _ in range(args.repeats):
        for key, measure_once in rows.items():
            rates[key].append(measure_once())
    jpeg_bytes = float(np.mean([len(b) for clip in shards.clip_ids for b in shards.jpegs(clip)]))
    yardstick = median(rates[(YARDSTICK, 0)])
    results = []
    for (path, workers), values in rates.items():
        per_core = median(values) / max(1, workers)
        results.append(
            dict(size=size, frames_per_clip=args.frames, path=path, workers=workers, cores=max(1, workers))
            | {"rates": values, "frames_per_s": median(values), "frames_per_s_per_core": per_core}
            | {"ms_per_clip": 1000 * args.frames / median(values), "vs_decode_jpeg": per_core / yardstick}
            | {"jpeg_bytes_per_frame": jpeg_bytes, "clips_in_shards": len(shards.clip_ids)}
        )
    return results


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Markdown table, with the cores each path needs to feed the step at the throughput targets."""
    names = list(TARGETS)
    columns = ["size", "path", "workers", "frames/s", "frames/s per core", "vs decode_jpeg", "ms/clip", "KiB/frame"]
    columns += [f"cores for {n}" for n in names]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cores = " | ".join(f"{TARGETS[n] / r['frames_per_s_per_core']:.2f}" for n in names)
        lines.append(
            f"| {r['size']} | {r['path']} | {r['workers']} | {r['frames_per_s']:.0f} | "
            f"{r['frames_per_s_per_core']:.0f} | {r['vs_decode_jpeg']:.2f} | {r['ms_per_clip']:.2f} | "
            f"{r['jpeg_bytes_per_frame'] / 1024:.1f} | {cores} |"
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
    parser.add_argument("--aspect", type=float, default=4 / 3, help="stored width / height of the crop rows")
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
