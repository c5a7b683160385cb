"""Decoding clips into shards: manifest schema, bad input recorded, resumable, failure threshold."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest

from eva02at.annotations import Segment, cut_videos, read_ek100, read_video_list
from eva02at.extract import TooManyFailures, encode_jpeg, extract, resize_crop
from eva02at.shards import MANIFEST, MANIFEST_SCHEMA, FrameShards, FrameSpec, decode_jpegs
from eva02at.video import read_frames, video_info

CLIP = "ego4d_3c0dffd0_012_014.mp4"  # 60 frames at 30 fps


def real_clips(ego4d_dir, seconds=2.0):
    durations = {}
    for name in read_video_list(ego4d_dir / "clips.csv"):
        try:
            durations[name] = video_info(ego4d_dir / name).duration
        except Exception:
            durations[name] = float("nan")
    return cut_videos(durations, seconds)


def test_real_clips_with_damaged_video(tmp_path, ego4d_dir):
    segments = real_clips(ego4d_dir)
    spec = FrameSpec(num_frames=4, size=32)
    summary = extract(segments, [], ego4d_dir, tmp_path, spec, workers=2, clips_per_shard=8, max_failure_fraction=0.5)
    manifest = pq.read_table(tmp_path / MANIFEST)
    assert manifest.schema.remove_metadata() == MANIFEST_SCHEMA
    rows = {r["clip_id"]: r for r in manifest.to_pylist()}
    assert len(rows) == len(segments) == summary.clips
    # corrupted.mp4 is 5 s at 10 fps and breaks after about 28 frames: the first 2 s clip decodes,
    # the second one (frames 20-39) fails and is reported against the file, nothing else fails
    failed = {c for c, r in rows.items() if r["status"] == "error"}
    assert failed == {"corrupted_0001"} and summary.failed == 1
    assert rows["corrupted_0001"]["source"] == "corrupted.mp4" and rows["corrupted_0001"]["error"]
    assert rows["corrupted_0000"]["status"] == "ok"
    shards = FrameShards(tmp_path)
    assert set(shards.clip_ids) == set(rows) - failed
    # the stored frames are the decoded frames at the manifest's indices, resized and cropped
    clip = f"{CLIP[:-4]}_0000"
    indices = rows[clip]["frame_indices"][0]
    assert indices == [7, 22, 37, 52]  # midpoints of four 15-frame parts of frames 0..59
    expected = np.stack([resize_crop(f, 32) for f in read_frames(ego4d_dir / CLIP, indices)])
    stored = decode_jpegs(shards.jpegs(clip))
    assert stored.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(stored, decode_jpegs([encode_jpeg(f, 90) for f in expected]))
    assert np.abs(stored.astype(int) - expected.astype(int)).mean() < 8  # JPEG loss stays small


def test_training_views_are_jittered_and_seeded(tmp_path, ego4d_dir):
    segments = [Segment("a", CLIP, 0.0, 2.0, 0), Segment("b", CLIP, 0.0, 2.0, 0)]
    spec = FrameSpec(num_frames=4, views=3, size=16, seed=7)
    extract(segments, [], ego4d_dir, tmp_path / "one", spec)
    extract(segments, [], ego4d_dir, tmp_path / "two", spec)
    one, two = FrameShards(tmp_path / "one"), FrameShards(tmp_path / "two")
    views = [one.frame_indices("a", v) for v in range(3)]
    assert one.num_views("a") == 3 and len({tuple(v) for v in views}) > 1
    for k, part in enumerate(range(0, 60, 15)):
        assert all(part <= v[k] < part + 15 for v in views)
    assert views == [two.frame_indices("a", v) for v in range(3)]  # same seed, same draws
    assert views != [one.frame_indices("b", v) for v in range(3)]  # each clip has its own draws


def test_bad_rows_and_segments_are_recorded_not_dropped(tmp_path, ego4d_dir):
    header = (
        "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
        "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
    )
    good = "P01_01_0,P01,clip,00:00:00.10,00:00:00.00,00:00:01.00,1,30,take plate,take,0,plate,2,['plate'],[2]\n"
    missing = "P01_01_1,P01,clip,00:00:00.10,,00:00:01.00,1,30,take plate,take,0,plate,2,['plate'],[2]\n"
    malformed = "P01_01_2,P01,clip,00:00:00.10,00:00:0x.00,00:00:01.00,1,30,take,take,0,plate,2,['plate'],[2]\n"
    past_end = "P01_01_3,P01,clip,00:00:00.10,00:00:01.50,00:00:03.00,1,30,take,take,0,plate,2,['plate'],[2]\n"
    csv = tmp_path / "test.csv"
    csv.write_text(header + good + missing + malformed + past_end)
    videos = tmp_path / "videos" / "P01"
    videos.mkdir(parents=True)
    (videos / "clip.MP4").write_bytes((ego4d_dir / CLIP).read_bytes())
    segments, errors = read_ek100(csv)
    assert [s.clip_id for s in segments] == ["P01_01_0", "P01_01_3"]
    assert [(e.line, "missing" in e.reason) for e in errors] == [(3, True), (4, False)]
    summary = extract(
        segments, errors, tmp_path / "videos", tmp_path / "out", FrameSpec(4, size=16), max_failure_fraction=0.8
    )
    rows = pq.read_table(tmp_path / "out" / MANIFEST).to_pylist()
    assert summary.ok == 1 and summary.failed == 3 and len(rows) == 4
    by_id = {r["clip_id"]: r for r in rows}
    assert "past the end" in by_id["P01_01_3"]["error"]
    assert by_id["test.csv:3"]["source"] == str(csv) and "start_timestamp" in by_id["test.csv:3"]["error"]
    assert "bad timestamp" in by_id["test.csv:4"]["error"]


def test_failure_threshold_keeps_the_work(tmp_path, ego4d_dir):
    segments = [Segment("ok", CLIP, 0.0, 1.0, 0), Segment("gone", "missing.mp4", 0.0, 1.0, 0)]
    with pytest.raises(TooManyFailures, match="1 of 2 clips failed"):
        extract(segments, [], ego4d_dir, tmp_path, FrameSpec(2, size=16), max_failure_fraction=0.25)
    assert "ok" in FrameShards(tmp_path)  # the manifest and the decoded clip are still written


def test_resume_keeps_finished_shards(tmp_path, ego4d_dir):
    segments = real_clips(ego4d_dir)[:12]
    spec = FrameSpec(num_frames=2, size=16)
    first = extract(segments, [], ego4d_dir, tmp_path, spec, clips_per_shard=4, max_failure_fraction=1)
    shard_files = sorted((tmp_path / "shards").iterdir())
    (tmp_path / "parts" / "shard-00001.parquet").unlink()  # as if the run had died during that shard
    mtimes = {p.name: p.stat().st_mtime_ns for p in shard_files}
    second = extract(segments, [], ego4d_dir, tmp_path, spec, clips_per_shard=4, max_failure_fraction=1)
    assert second.written_shards == 1 and second.kept_shards == first.written_shards - 1
    assert all(p.stat().st_mtime_ns == mtimes[p.name] for p in shard_files if p.name != "shard-00001.arrow")
    changed = extract(
        segments, [], ego4d_dir, tmp_path, FrameSpec(num_frames=3, size=16), clips_per_shard=4, max_failure_fraction=1
    )
    assert changed.kept_shards == 0  # a different spec invalidates every shard
    assert FrameShards(tmp_path).frame_indices(segments[0].clip_id) != []


def test_frame_shards_survive_pickling(tmp_path, ego4d_dir):
    extract([Segment("a", CLIP, 0.0, 2.0, 0)], [], ego4d_dir, tmp_path, FrameSpec(2, size=16))
    shards = FrameShards(tmp_path)
    clone = pickle.loads(pickle.dumps(shards))
    assert clone.jpegs("a") == shards.jpegs("a")
    with pytest.raises(KeyError, match="not in the shards"):
        shards.jpegs("b")
