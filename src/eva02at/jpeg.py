"""The stored frames' JPEG codec: Pillow encodes when shards are written, torchvision decodes when they are read.

Both are libjpeg-turbo. torch and torchvision load only when frames are decoded, so that the frames stage and
its decode workers (local processes or Ray tasks), which only encode, start about three seconds sooner per
process.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """uint8 [H, W, 3] RGB to JPEG bytes at ``quality`` (Pillow's libjpeg-turbo, 4:2:0 chroma)."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_jpegs(jpegs: Sequence[bytes], out: np.ndarray | None = None) -> np.ndarray:
    """JPEG bytes to uint8 [T, H, W, 3] RGB with torchvision's libjpeg-turbo decoder.

    ``out`` (uint8 [T, H, W, 3], e.g. a batch in shared memory) receives the frames, so that a loader copies
    each decoded frame once. All frames go to the decoder in one call: per call, its Python wrapper costs
    about a tenth of decoding a 224 px frame (BENCHMARKS.md, input path). The decoder writes rows of pixels
    (H, W, 3); that memory is kept, because transposing it to channels-first on the CPU would cost about as
    much as decoding.
    """
    if out is not None and len(out) != len(jpegs):
        raise ValueError(f"{len(jpegs)} JPEGs for {len(out)} frames of output")
    if not jpegs:
        raise ValueError("no JPEG to decode")
    import torch  # here, not at the top: see the module docstring
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB)  # T tensors (3, H, W)
    for t, frame in enumerate(decoded):
        pixels = frame.permute(1, 2, 0).numpy()  # (H, W, 3), the decoder's own memory order: no copy
        if out is None:
            out = np.empty((len(jpegs), *pixels.shape), dtype=np.uint8)
        if out.shape[1:] != pixels.shape:
            raise ValueError(f"frame {t} is {pixels.shape[:2]} pixels, expected {out.shape[1:3]}")
        out[t] = pixels
    return out
