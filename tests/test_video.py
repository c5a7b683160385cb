"""Decoding and frame sampling: exact frames against PyAV, the one-pass scaled decoder against the per-clip
reader, the sampling rule on hand-computed cases."""

from __future__ import annotations

import av
import numpy as np
import pytest

from eva02at.data import video
from eva02at.data.extract import resize_crop
from eva02at.data.synthetic.encode import write_video
from eva02at.data.synthetic.layout import Shot, VideoJob
from eva02at.data.synthetic.scene import Renderer
from eva02at.data.video import (
    VideoDecodeError,
    decoder_message,
    index_video,
    read_frames,
    scaled_frames,
    seconds_to_frames,
    segment_indices,
    video_info,
)

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


def small_video(path, frames: int = 45, keyint: int = 10, size: tuple[int, int] = (72, 128)) -> None:
    """A 128x72 H.264 file with a keyframe every ``keyint`` frames and B-frames: a square moving on blocks."""
    height, width = size
    rng = np.random.default_rng(0)
    background = rng.integers(40, 200, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    background = background.repeat(8, 0).repeat(8, 1)[:height, :width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(keyint), "keyint_min": str(keyint), "sc_threshold": "0", "bf": "2"}
        for k in range(frames):
            picture = background.copy()
            picture[20:44, 10 + 2 * k : 34 + 2 * k] = (230, 30, 30)  # a red square moving right
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def assert_close_to_reference(scaled: np.ndarray, reference: np.ndarray) -> None:
    """The decoder's scaler against decode + Pillow resize: about one grey level apart on average (decord's
    YUV->RGB rounds about one level darker than the BT.601 formula), edges a little softer or sharper."""
    diff = np.abs(scaled.astype(int) - reference.astype(int))
    assert scaled.shape == reference.shape
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 16


@pytest.mark.parametrize("box", [(224, 224), (224, 398)])
def test_scaled_frames_match_the_per_clip_reader(ego4d_dir, box):
    for name in REAL_CLIPS:
        path = ego4d_dir / name
        index = index_video(path)
        assert index.num_frames == video_info(path).num_frames
        frames = [index.num_frames - 1, *range(0, index.num_frames, 11), 5, 5]  # unsorted, repeated, the last
        decoded = list(scaled_frames(path, index, frames, *box))
        assert sorted(f for f, _ in decoded) == sorted(set(frames))  # each wanted frame once
        scaled = np.stack([picture for _, picture in sorted(decoded, key=lambda item: item[0])])
        reference = np.stack([resize_crop(f, *box) for f in read_frames(path, sorted(set(frames)))])
        assert_close_to_reference(scaled, reference)


@pytest.mark.parametrize("box", [(64, 64), (64, 80)])
def test_scaled_frames_on_a_video_of_the_embedded_sample(tmp_path, box):
    """A 128x72 video drawn by the sample's renderer, at the sample's frame sizes (eval square, train box)."""
    renderer = Renderer({0: "take", 1: "wash"}, [3, 5, 7], (128, 72), 10.0, seed=0)
    job = VideoJob("v.mp4", "P01", 60, (Shot(5, 25, 0, (3, 5)), Shot(30, 55, 1, (7,))))
    path = tmp_path / "v.mp4"
    write_video(path, renderer.frames(job), fps=10)
    frames = list(range(60))
    decoded = dict(scaled_frames(path, index_video(path), frames, *box))
    scaled = np.stack([decoded[f] for f in frames])
    reference = np.stack([resize_crop(f, *box) for f in read_frames(path, frames)])
    assert_close_to_reference(scaled, reference)


def test_a_pass_that_seeks_and_skips_gives_the_frames_of_a_full_pass(tmp_path, monkeypatch):
    path = tmp_path / "sample.mp4"
    small_video(path)  # keyframes at 0, 10, 20, 30, 40
    index = index_video(path)
    full = dict(scaled_frames(path, index, range(45), 32, 32))
    decoded_spans = []
    original = video._span_packets

    def spy(container, stream, index, first):
        for span, packet in original(container, stream, index, first):
            decoded_spans.append(span)
            yield span, packet

    monkeypatch.setattr(video, "_span_packets", spy)
    wanted = [27, 12, 13, 41]  # spans 1, 2 and 4; span 3 is skipped and the pass starts at span 1
    sparse = dict(scaled_frames(path, index, wanted, 32, 32))
    assert sorted(sparse) == sorted(wanted)
    for frame in wanted:
        np.testing.assert_array_equal(sparse[frame], full[frame])
    assert decoded_spans[0] == 1  # the seek landed on the first wanted keyframe span


def test_a_decoder_error_fails_the_rest_of_its_keyframe_span(ego4d_dir):
    path = ego4d_dir / "corrupted.mp4"  # one keyframe span; a packet near frame 30 is broken
    index = index_video(path)
    result = dict(scaled_frames(path, index, [0, 20, 28, 35, 49], 32, 32))
    assert all(isinstance(result[f], np.ndarray) for f in (0, 20))
    for frame in (35, 49):
        assert isinstance(result[frame], str) and "Invalid data" in result[frame]


def test_decoder_messages_lose_clock_times_and_addresses():
    raw = (
        "[02:00:19] /github/workspace/src/video/ffmpeg/threaded_decoder.cc:292: [02:00:19] "
        "/github/workspace/src/video/ffmpeg/threaded_decoder.cc:218: Check failed: avcodec_send_packet(dec_ctx_.get(),"
        " pkt.get()) >= 0 (-1094995529 vs. 0) Thread worker: Error sending packet."
    )
    later = raw.replace("02:00:19", "23:59:01")
    assert decoder_message(RuntimeError(raw)) == decoder_message(RuntimeError(later))
    assert decoder_message(RuntimeError(raw)).startswith("Check failed: avcodec_send_packet")
    assert decoder_message(RuntimeError("[h264 @ 0x55e07adb4f40] Invalid NAL unit")) == "[h264 @ 0x?] Invalid NAL unit"
