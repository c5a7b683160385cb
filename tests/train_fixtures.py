"""Tiny frame collections for the training tests, written in the frames stage's format; process probes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eva02at.data.jpeg import encode_jpeg
from eva02at.data.shards import FrameShards, FrameSpec, write_manifest, write_shard

WORDS = ["take plate", "open drawer", "wash cup", "cut onion", "put knife", "close fridge"]


def write_clips(root: Path, spec: FrameSpec, clips: int, seed: int = 0) -> FrameShards:
    """``clips`` captioned clips of random ``spec.height x spec.width`` frames, ``max(1, spec.views)`` views
    each, smooth enough (4 x 4 blocks) for JPEG to keep them recognisable."""
    rng = np.random.default_rng(seed)
    views = max(1, spec.views)
    # each view its own frames of the video (a frame shared by views is one picture in the shard)
    indices = [list(range(v * spec.num_frames, (v + 1) * spec.num_frames)) for v in range(views)]
    rows, manifest = [], []
    for i in range(clips):
        for view in range(views):
            blocks = rng.integers(
                0, 255, (spec.num_frames, -(-spec.height // 4), -(-spec.width // 4), 3), dtype=np.uint8
            )
            frames = np.kron(blocks, np.ones((1, 4, 4, 1), dtype=np.uint8))[:, : spec.height, : spec.width]
            jpegs = [encode_jpeg(np.ascontiguousarray(frame), spec.jpeg_quality) for frame in frames]
            rows.append({"clip_id": f"c{i}", "view": view, "frame_indices": indices[view], "jpeg": jpegs})
        manifest.append(
            {
                "clip_id": f"c{i}",
                "source": "x.mp4",
                "line": i + 2,
                "start": 0.0,
                "end": 1.0,
                "text": WORDS[i % len(WORDS)],
                "frame_indices": indices,
                "height": spec.height,
                "width": spec.width,
                "status": "ok",
                "error": "",
                "shard": "shard-00000.arrow",
            }
        )
    write_shard(root / "shards" / "shard-00000.arrow", rows)
    write_manifest(root / "manifest.parquet", manifest, spec.metadata())
    return FrameShards(root)
