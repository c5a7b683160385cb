"""The decode benchmark's code path at tiny sizes: input made, both rates measured, numbers consistent."""

from __future__ import annotations

import argparse

import pytest

from bench import decode


@pytest.mark.slow
def test_decode_benchmark_runs_small(tmp_path):
    args = argparse.Namespace(
        seconds=3, keyint=[1], width=192, height=108, size=16, aspect=1.25, frames=4, views=5,
        clip_every=0.9, clip_seconds=0.5, repeats=2, cache=str(tmp_path / "cache"), out="-",
    )  # fmt: skip
    result = decode.run(args)
    (file,) = result["files"].values()
    assert file["video_frames"] == 90  # 3 s at 30 fps
    assert file["clips"] == 3  # clips start at 0, 0.9 and 1.8 s and end inside the video
    assert file["stage_clips_per_s"] == pytest.approx(file["clips"] / file["stage_cpu_seconds"])
    assert file["ratio_to_plain"] == pytest.approx(file["plain_cpu_seconds"] / file["stage_cpu_seconds"])
    assert file["egoclip_core_hours"] == pytest.approx(decode.EGOCLIP_HOURS * file["stage_cpu_seconds"] / 3.0)
    # views share frames: storing each distinct frame once is smaller than a copy per view
    assert 0 < file["shard_bytes_per_clip"] < file["bytes_per_clip_one_copy_per_view"]
    assert result["machine"]["cores"] == 1  # measured pinned to one core
