"""H.264 files that look like camera footage to a decoder, written reproducibly.

Real videos use long groups of pictures (a keyframe every few seconds), which is what makes seeking
and frame sampling costly; the synthetic files keep that property. One encoder thread makes the
bytes depend on the frames alone, and the RGB to YUV conversion asks FFmpeg's swscale for bit-exact
output: by default swscale picks SIMD code by CPU, whose rounding differs from machine to machine.
x264 picks SIMD code by CPU as well, and its levels do not all agree: its SSSE3 to AVX2 code gives the
same bytes, its plain C and SSE2 code others, and its AVX-512 code others again, which even change from
one encode of the same frames to the next (measured on an AVX-512 EPYC). On x86-64, where every CPU of
the last 15 years has SSSE3, x264 is held to SSSE3: the same bytes on any of them.
"""

from __future__ import annotations

import itertools
import os
import platform
from collections.abc import Iterable

import av
import numpy as np
from av.video.reformatter import Interpolation

GOP_SECONDS = 10
TO_YUV = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT  # same bytes on any CPU
X264_SSSE3 = 0x6F  # x264.h's X264_CPU_ flags MMX, MMX2, SSE, SSE2, SSE3 and SSSE3: x264's code on any x86-64


def x264_options(crf: int, fps: int) -> dict[str, str]:
    """The encoder's settings: a keyframe every GOP_SECONDS and, on x86-64, x264's SSSE3 code (see above)."""
    options = {"crf": str(crf), "preset": "veryfast", "g": str(GOP_SECONDS * fps)}
    if platform.machine().lower() in ("x86_64", "amd64"):
        options["x264-params"] = f"asm={X264_SSSE3}"
    return options


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: int, crf: int = 20) -> int:
    """Encode RGB frames (H, W, 3) uint8 as H.264 (yuv420p) in an MP4 container; returns the frame count."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    count = 0
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=x264_options(crf, fps))
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for frame in itertools.chain([first], frames):
            rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame = rgb.reformat(format=stream.pix_fmt, interpolation=TO_YUV)  # the encoder's format
            video_frame.pts = count
            container.mux(stream.encode(video_frame))
            count += 1
        container.mux(stream.encode(None))
    return count
