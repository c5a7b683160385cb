"""Draw and encode a few synthetic videos; print, as JSON, hashes of their frames and of their files.

``tests/test_synthetic.py`` runs this in fresh processes, one of them with numpy's SIMD kernels switched off
(``NPY_DISABLE_CPU_FEATURES``) and, with ``--plain-ffmpeg``, FFmpeg's too, as on a CPU without them: the
frames (before encoding) and the files must not change by a bit.

Usage: ``python tests/sample_probe.py [--plain-ffmpeg]``
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import av  # noqa: F401  (loads FFmpeg's libraries, so that --plain-ffmpeg finds them)
from numpy.lib.introspect import opt_func_info

from eva02at.data.synthetic.captions import class_subset
from eva02at.data.synthetic.encode import write_video
from eva02at.data.synthetic.layout import Shot, VideoJob
from eva02at.data.synthetic.scene import Renderer

SOURCE = Path(__file__).resolve().parents[1] / "data" / "sample" / "ek100"
LOOKS = 6  # their backgrounds cover stripes, checks and blotches
SHOT, GAP = 12, 2  # frames


def plain_ffmpeg() -> int:
    """Make the FFmpeg that PyAV loaded use its plain C code paths; returns the CPU flags now in force (0)."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    path = next(line.split()[-1] for line in maps if "libavutil" in line)
    libavutil = ctypes.CDLL(path)  # the library already loaded, not a second copy
    libavutil.av_force_cpu_flags(0)
    return libavutil.av_get_cpu_flags()


def jobs(verbs: list[int], nouns: list[int]) -> list[VideoJob]:
    """One video per look, three shots each (a moving and a still object), every verb and noun shown."""
    made = []
    for video in range(LOOKS):
        shots = tuple(
            Shot(
                GAP + k * (SHOT + GAP),
                GAP + k * (SHOT + GAP) + SHOT,
                verbs[(3 * video + k) % len(verbs)],
                (nouns[(2 * video + k) % len(nouns)], nouns[(2 * video + k + 5) % len(nouns)]),
            )
            for k in range(3)
        )
        made.append(VideoJob(f"look-{video}.mp4", f"look-{video}", 3 * (SHOT + GAP) + GAP, shots))
    return made


def main() -> None:
    ffmpeg_flags = plain_ffmpeg() if "--plain-ffmpeg" in sys.argv[1:] else None
    subset = class_subset(SOURCE, 8, 12)
    renderer = Renderer(subset.verbs, list(subset.nouns), (64, 36), 10, seed=0)
    frames, files = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for job in jobs(list(subset.verbs), list(subset.nouns)):
            drawn = list(renderer.frames(job))
            frames[job.path] = hashlib.sha256(b"".join(f.tobytes() for f in drawn)).hexdigest()
            write_video(Path(folder) / job.path, drawn, 10)
            files[job.path] = hashlib.sha256((Path(folder) / job.path).read_bytes()).hexdigest()
    numpy_sin = opt_func_info(func_name="^sin$", signature="^f")["sin"]["ff"]["current"]
    print(json.dumps({"numpy_float32_sin": numpy_sin, "ffmpeg_flags": ffmpeg_flags, "frames": frames, "files": files}))


if __name__ == "__main__":
    main()
