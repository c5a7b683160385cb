"""Decoding and frame sampling: exact frames against PyAV, the sampling rule on hand-computed cases."""

from __future__ import annotations

import av
import numpy as np
import pytest

from eva02at.video import VideoDecodeError, read_frames, seconds_to_frames, segment_indices, video_info

REAL_CLIPS = [
    "ego4d_3c0dffd0_012_014.mp4",
    "ego4d_site_bristol.mp4",
    "ego4d_site_catania.mp4",
    "ego4d_site_fair.mp4",
    "ego4d_site_kaust.mp4",
    "ego4d_site_nus.mp4",
    "ego4d_site_tokyo.mp4",
]


def pyav_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.mark.parametrize("name", REAL_CLIPS)
def test_read_frames_equals_pyav_exactly(ego4d_dir, name):
    path = ego4d_dir / name
    reference = pyav_frames(path)
    info = video_info(path)
    assert info.num_frames == len(reference)
    rng = np.random.default_rng(0)
    # out of order, repeated and boundary indices: each must be the exact frame at that position
    indices = [len(reference) - 1, 0, *rng.integers(0, len(reference), 6).tolist(), 0]
    frames = read_frames(path, indices)
    assert frames.dtype == np.uint8 and frames.shape == (len(indices), info.height, info.width, 3)
    for frame, index in zip(frames, indices, strict=True):
        np.testing.assert_array_equal(frame, reference[index])


def test_damaged_video_raises_with_path_and_reason(ego4d_dir):
    path = ego4d_dir / "corrupted.mp4"
    assert read_frames(path, [0, 5]).shape[0] == 2  # the start of the file is intact
    with pytest.raises(VideoDecodeError) as err:
        read_frames(path, [30, 40])
    assert err.value.path == str(path) and "decoding frames" in err.value.reason


def test_missing_empty_and_out_of_range(tmp_path, ego4d_dir):
    with pytest.raises(VideoDecodeError, match="file not found"):
        read_frames(tmp_path / "nope.mp4", [0])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty file"):
        read_frames(empty, [0])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(VideoDecodeError, match="cannot open"):
        read_frames(garbage, [0])
    with pytest.raises(VideoDecodeError, match="past the end"):
        read_frames(ego4d_dir / REAL_CLIPS[0], [60])


@pytest.mark.parametrize(
    ("start", "end", "count", "expected"),
    [
        (0, 9, 2, [2, 7]),  # 10 frames, halves [0,5) and [5,10): midpoints 2.5 and 7.5
        (0, 7, 4, [1, 3, 5, 7]),  # parts of 2 frames: midpoints 1, 3, 5, 7
        (1, 113, 4, [15, 43, 71, 99]),  # 113 frames, parts of 28.25: midpoints 15.125, 43.375, ...
        (5, 6, 4, [5, 5, 6, 6]),  # fewer frames than samples: frames repeat
        (3, 3, 3, [3, 3, 3]),
    ],
)
def test_segment_midpoints(start, end, count, expected):
    assert segment_indices(start, end, count) == expected


def test_segment_jitter_stays_in_its_part_and_is_seeded():
    start, end, count = 10, 49, 4  # 40 frames, parts of 10
    draws = [segment_indices(start, end, count, jitter=True, rng=np.random.default_rng(s)) for s in range(400)]
    for draw in draws:
        for k, index in enumerate(draw):
            assert start + 10 * k <= index < start + 10 * (k + 1)
    # every frame of each part is reachable, roughly uniformly (40 frames, 400 draws of each part)
    counts = np.bincount(np.array(draws).ravel(), minlength=end + 1)[start:]
    assert counts.min() > 20 and counts.max() < 65
    again = segment_indices(start, end, count, jitter=True, rng=np.random.default_rng(3))
    assert again == draws[3]
    with pytest.raises(ValueError, match="rng"):
        segment_indices(0, 9, 2, jitter=True)


def test_bad_segments():
    with pytest.raises(ValueError, match="empty segment"):
        segment_indices(5, 4, 2)
    with pytest.raises(ValueError, match="positive"):
        segment_indices(0, 4, 0)


def test_seconds_to_frames():
    assert seconds_to_frames(0.0, 2.0, 30.0) == (0, 59)  # a 2 s clip at 30 fps is frames 0..59
    assert seconds_to_frames(1.56, 2.45, 60.0) == (93, 146)
    assert seconds_to_frames(1.0, 1.01, 10.0) == (10, 10)
