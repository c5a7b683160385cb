"""The stored frames' JPEG codec: Pillow encodes when shards are written, simplejpeg decodes when they are read.

Both are libjpeg-turbo, and the decoder uses the same accurate DCT and smooth chroma upsampling as Pillow's and
torchvision's, so every decoder gives the same pixels (``tests/test_jpeg.py``). What simplejpeg adds over
torchvision's ``decode_jpeg``: it decodes into memory the caller gives, so a loader worker writes each frame
straight into the batch's shared memory, where torchvision's decoder allocates its own frame and a copy into
the batch costs about a tenth of decoding (BENCHMARKS.md, input path). Neither codec loads torch, so the frames
stage and its decode workers (local processes or Ray tasks) start about three seconds sooner per process.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import simplejpeg
from PIL import Image


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """uint8 [H, W, 3] RGB to JPEG bytes at ``quality`` (Pillow's libjpeg-turbo, 4:2:0 chroma)."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a JPEG from its header, nothing decoded."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return height, width


def decode_jpegs(jpegs: Sequence[bytes], out: np.ndarray | None = None) -> np.ndarray:
    """JPEG bytes to uint8 [T, H, W, 3] RGB, each frame decoded straight into ``out`` (e.g. a batch in shared
    memory) or into a new array; a frame of another size than ``out``'s, or a damaged JPEG, is a ValueError
    naming the frame."""
    if not jpegs:
        raise ValueError("no JPEG to decode")
    if out is None:
        out = np.empty((len(jpegs), *jpeg_size(jpegs[0]), 3), dtype=np.uint8)
    if len(out) != len(jpegs):
        raise ValueError(f"{len(jpegs)} JPEGs for {len(out)} frames of output")
    for t, data in enumerate(jpegs):
        size = jpeg_size(data)
        if size != out.shape[1:3]:
            raise ValueError(f"frame {t} is {size} pixels, expected {out.shape[1:3]}")
        try:
            simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out[t])
        except ValueError as error:
            raise ValueError(f"frame {t} could not be decoded: {error}") from None
    return out
