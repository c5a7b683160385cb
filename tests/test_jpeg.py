"""The frames' JPEG decoder: the pixels torchvision's and Pillow's libjpeg-turbo give, written into the caller's
memory, and a damaged or mis-sized frame named in the error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from eva02at.data.extract import resize_crop
from eva02at.data.jpeg import decode_jpegs, encode_jpeg, jpeg_size
from eva02at.data.video import read_frames

VIDEO = Path(__file__).resolve().parents[1] / "data" / "sample" / "ego4d" / "ego4d_site_nus.mp4"


@pytest.fixture(scope="module")
def real_jpegs() -> list[bytes]:
    """Four frames of a real Ego4D clip as training stores them: 224 x 398 px (16:9), quality 90."""
    frames = read_frames(VIDEO, [0, 30, 60, 90])
    return [encode_jpeg(resize_crop(frame, 224, 398), 90) for frame in frames]


def torchvision_frames(jpegs: list[bytes]) -> np.ndarray:
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
    return np.stack([decode_jpeg(t, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy() for t in tensors])


def test_real_frames_decode_to_torchvisions_and_pillows_pixels(real_jpegs):
    decoded = decode_jpegs(real_jpegs)
    assert decoded.shape == (4, 224, 398, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, torchvision_frames(real_jpegs))
    pillow = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in real_jpegs])
    np.testing.assert_array_equal(decoded, pillow)
    assert jpeg_size(real_jpegs[0]) == (224, 398)


def test_frames_are_written_into_the_callers_memory(real_jpegs):
    out = np.zeros((2, 4, 224, 398, 3), dtype=np.uint8)  # a batch of two clips
    returned = decode_jpegs(real_jpegs, out=out[1])
    assert returned.base is out or np.shares_memory(returned, out)
    np.testing.assert_array_equal(out[1], torchvision_frames(real_jpegs))
    assert not out[0].any()  # the other clip's frames untouched


def test_a_damaged_or_mis_sized_frame_is_named(real_jpegs):
    damaged = real_jpegs[1][: len(real_jpegs[1]) // 2]  # cut in the middle of the scan
    with pytest.raises(ValueError, match="frame 1 could not be decoded"):
        decode_jpegs([real_jpegs[0], damaged])
    small = encode_jpeg(np.zeros((16, 20, 3), dtype=np.uint8), 90)
    with pytest.raises(ValueError, match=r"frame 2 is \(16, 20\) pixels, expected \(224, 398\)"):
        decode_jpegs([*real_jpegs[:2], small])
    with pytest.raises(ValueError, match="no JPEG"):
        decode_jpegs([])
