"""Decoding clips into shards: manifest schema, bad input recorded, resumable, failure threshold."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import pickle
import weakref
from dataclasses import asdict, replace
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eva02at.core.atomic import DiskFull, atomic_path
from eva02at.data import extract as extract_module
from eva02at.data.annotations import (
    CLAMP_END_PAST_VIDEO,
    CLAMP_NEGATIVE_START,
    RowError,
    Segment,
    Source,
)
from eva02at.data.extract import TooManyFailures, chain_shards, extract, plan_shards, resize_crop, run_local
from eva02at.data.formats.registered import read_segments
from eva02at.data.formats.videolist import VideoListParams
from eva02at.data.jpeg import decode_jpegs, encode_jpeg
from eva02at.data.shards import (
    MANIFEST,
    MANIFEST_SCHEMA,
    SHARD_LAYOUT,
    FrameShards,
    FrameSpec,
    ShardReadError,
    read_shard,
    write_manifest_tables,
)
from eva02at.data.video import index_video, read_frames, scaled_frames

CLIP = "ego4d_3c0dffd0_012_014.mp4"  # 60 frames at 30 fps


def real_clips(ego4d_dir, seconds=2.0):
    segments, errors = read_segments(
        "videolist", Source(str(ego4d_dir / "clips.csv"), str(ego4d_dir), None, VideoListParams(seconds))
    )
    assert errors == []
    return segments


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
    # the stored frames are the frames at the manifest's indices, scaled by the decoder, then JPEG-encoded
    clip = f"{CLIP[:-4]}_0000"
    indices = rows[clip]["frame_indices"][0]
    assert indices == [7, 22, 37, 52]  # midpoints of four 15-frame parts of frames 0..59
    scaled = dict(scaled_frames(ego4d_dir / CLIP, index_video(ego4d_dir / CLIP), indices, 32, 32))
    stored = decode_jpegs(shards.jpegs(clip))
    assert stored.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(stored, decode_jpegs([encode_jpeg(scaled[i], 90) for i in indices]))
    reference = np.stack([resize_crop(f, 32) for f in read_frames(ego4d_dir / CLIP, indices)])
    assert np.abs(stored.astype(int) - reference.astype(int)).mean() < 8  # scaler and JPEG differences stay small


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
    segments, errors = read_segments("ek100", Source(str(csv)))
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


def test_a_resume_that_decodes_nothing_keeps_the_manifest_unless_it_no_longer_joins_the_parts(tmp_path, ego4d_dir):
    segments = real_clips(ego4d_dir)[:10]
    spec, errors = FrameSpec(num_frames=2, size=16), [RowError("clips.csv", 3, "bad time")]
    run = functools.partial(extract, segments, video_root=ego4d_dir, spec=spec, clips_per_shard=4)
    first = run(row_errors=errors, out_dir=tmp_path / "out", max_failure_fraction=1)
    manifest = tmp_path / "out" / MANIFEST
    written = manifest.stat().st_ino  # a manifest written again is a new file (atomic rename)
    again = run(row_errors=errors, out_dir=tmp_path / "out", max_failure_fraction=1)
    assert again == replace(first, kept_shards=first.written_shards, written_shards=0)
    assert manifest.stat().st_ino == written
    with pytest.raises(TooManyFailures) as failed:  # the threshold applies to the kept manifest's tally too
        run(row_errors=errors, out_dir=tmp_path / "out", max_failure_fraction=0)
    assert failed.value.summary == again and manifest.stat().st_ino == written
    part = tmp_path / "out" / "parts" / "shard-00001.parquet"
    os.utime(part, ns=(manifest.stat().st_mtime_ns + 10**9,) * 2)  # as if written after the manifest
    run(row_errors=errors, out_dir=tmp_path / "out", max_failure_fraction=1)
    assert manifest.stat().st_ino != written
    fewer = run(row_errors=[], out_dir=tmp_path / "out", max_failure_fraction=1)  # other annotation errors
    assert fewer.clips == first.clips - 1 and fewer.written_shards == 0
    run(row_errors=[], out_dir=tmp_path / "fresh", max_failure_fraction=1)
    assert manifest.read_bytes() == (tmp_path / "fresh" / MANIFEST).read_bytes()


def test_frame_shards_survive_pickling(tmp_path, ego4d_dir):
    extract([Segment("a", CLIP, 0.0, 2.0, 0)], [], ego4d_dir, tmp_path, FrameSpec(2, size=16))
    shards = FrameShards(tmp_path)
    clone = pickle.loads(pickle.dumps(shards))
    assert clone.jpegs("a") == shards.jpegs("a")
    with pytest.raises(KeyError, match="not in the shards"):
        shards.jpegs("b")


def shard_contents(directory) -> dict:
    """Every stored view of a collection: clip -> [(frame indices, JPEG bytes) per view]."""
    shards = FrameShards(directory)
    return {
        c: [(shards.frame_indices(c, v), shards.jpegs(c, v)) for v in range(shards.num_views(c))]
        for c in shards.clip_ids
    }


def test_views_share_stored_frames_and_keep_room_to_crop(tmp_path, ego4d_dir):
    spec = FrameSpec(num_frames=4, views=5, size=16, seed=3, aspect=1.25)
    extract([Segment("a", CLIP, 0.0, 1.0, 0)], [], ego4d_dir, tmp_path, spec)  # 30 frames, parts of 7.5
    (row,) = read_shard(tmp_path / "shards" / "shard-00000.arrow").to_pylist()
    views = [[row["frame_indices"][p] for p in positions] for positions in row["views"]]
    assert row["frame_indices"] == sorted({i for view in views for i in view})  # each frame once
    assert len(row["jpeg"]) == len(row["frame_indices"]) < 4 * 5  # 20 draws from 30 frames repeat some
    shards = FrameShards(tmp_path)
    assert [shards.frame_indices("a", v) for v in range(5)] == views
    jpeg_of = dict(zip(row["frame_indices"], row["jpeg"], strict=True))
    for v, view in enumerate(views):
        assert shards.jpegs("a", v) == [jpeg_of[i] for i in view]
    assert decode_jpegs(shards.jpegs("a")).shape == (4, 16, 20, 3)  # size x round(size * aspect)
    manifest = pq.read_table(tmp_path / MANIFEST).to_pylist()[0]
    assert (manifest["height"], manifest["width"]) == (16, 20) and manifest["frame_indices"] == views


def test_a_long_video_spans_shards_with_the_bytes_of_one_shard(tmp_path, ego4d_dir):
    video = "ego4d_site_fair.mp4"  # 454 frames, 8 keyframe spans
    segments = [Segment(f"c{k:02d}", video, 0.5 * k, 0.5 * k + 1.0, 0) for k in range(28)][::-1]
    spec = FrameSpec(num_frames=4, views=2, size=16)
    many = extract(segments, [], ego4d_dir, tmp_path / "many", spec, clips_per_shard=6)
    one = extract(segments, [], ego4d_dir, tmp_path / "one", spec, clips_per_shard=100)
    assert many.written_shards == 5 and one.written_shards == 1 and many.ok == one.ok == 28
    assert shard_contents(tmp_path / "many") == shard_contents(tmp_path / "one")
    first = read_shard(tmp_path / "many" / "shards" / "shard-00000.arrow")["clip_id"].to_pylist()
    assert first == [f"c{k:02d}" for k in range(6)]  # a shard holds consecutive clips in time order


def test_each_video_is_indexed_once_per_run_whatever_its_shards(tmp_path, ego4d_dir, monkeypatch):
    long, short = "ego4d_site_fair.mp4", CLIP  # 28 clips over 5 shards; 2 clips in one shard
    segments = [Segment(f"c{k:02d}", long, 0.5 * k, 0.5 * k + 1.0, 0) for k in range(28)]
    segments += [Segment(f"s{k}", short, 0.5 * k, 0.5 * k + 0.5, 0) for k in range(2)]
    reads = []

    def counted(path):
        reads.append(path.name)
        return index_video(path)

    monkeypatch.setattr(extract_module, "index_video", counted)
    summary = extract(segments, [], ego4d_dir, tmp_path, FrameSpec(num_frames=4, size=16), clips_per_shard=6)
    assert summary.written_shards == 6 and summary.ok == 30
    assert sorted(reads) == sorted([long, short])  # not once per shard of the long video


def cut_videos_segments(ego4d_dir, clips_per_video: int) -> list[Segment]:
    """``clips_per_video`` overlapping 0.5 s clips of each sample video but the damaged one."""
    videos = sorted(p.name for p in ego4d_dir.glob("*.mp4") if p.name != "corrupted.mp4")
    return [Segment(f"{v}-{k:02d}", v, 0.1 * k, 0.1 * k + 0.5, 0) for v in videos for k in range(clips_per_video)]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_video_cut_over_shards_is_indexed_once_by_one_worker(tmp_path, ego4d_dir, workers):
    segments = cut_videos_segments(ego4d_dir, 14)  # 7 videos, each cut over 3 shards of 6 clips
    results, chain_lengths = [], []

    def recorded(chains, n):
        chain_lengths.extend(len(chain) for chain in chains)
        for result in run_local(chains, n):
            results.append(result)
            yield result

    spec = FrameSpec(num_frames=2, size=16)
    summary = extract(segments, [], ego4d_dir, tmp_path, spec, workers=workers, clips_per_shard=6, runner=recorded)
    assert summary.written_shards == 21 and summary.ok == len(segments)
    assert chain_lengths == [3] * 7  # a cut video's shards are one unit of work
    assert sorted(v for result in results for v in result.indexed) == sorted({s.video for s in segments})


def test_frame_indexes_alive_at_once_stay_bounded_whatever_the_cut_videos(tmp_path, ego4d_dir, monkeypatch):
    segments = cut_videos_segments(ego4d_dir, 14)
    alive, peak = [0], [0]

    def counted(path):
        index = index_video(path)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(index, lambda: alive.__setitem__(0, alive[0] - 1))
        return index

    monkeypatch.setattr(extract_module, "index_video", counted)
    extract(segments, [], ego4d_dir, tmp_path, FrameSpec(num_frames=2, size=16), clips_per_shard=6)
    assert peak[0] == 1 and alive[0] == 0  # before: every cut video's index (7) held from planning to the end


def test_shards_chain_where_a_video_goes_on_even_past_a_finished_shard():
    clips = [Segment(f"{v}{k}", v, float(k), k + 1.0, 0) for v, n in (("a", 9), ("b", 2), ("c", 3)) for k in range(n)]
    plan = plan_shards(clips, "videos", "out", FrameSpec(2), clips_per_shard=4)  # a0-3 | a4-7 | a8 b0 b1 | c0-2
    chains = chain_shards([plan[0], plan[2], plan[3]])  # plan[1] kept from an earlier run
    assert [[task.name for task in chain] for chain in chains] == [["shard-00000", "shard-00002"], ["shard-00003"]]


@pytest.mark.parametrize(
    "odd",
    [
        {},
        {"text": 'Ünïcode \\ "quoted"\n\t\x00 \U0001f600'},
        {"start": 1e-07, "end": 1e22},
        {"start": -0.0, "clamped": ("negative start", "end past video")},
        {"start": float("nan")},  # the fallback to json.dumps: NaN, a bool, a NumPy number, an int for a float
        {"end": float("inf")},
        {"line": True},
        {"start": np.float64(0.25)},
        {"end": 3},
    ],
)
def test_plan_stamps_are_the_json_text_earlier_runs_recorded(odd):
    spec = FrameSpec(num_frames=4, views=2, size=16, aspect=1.25)
    clips = [Segment(f"c{k}", "v.mp4", 0.5 * k, 0.5 * k + 1.5, k + 2, f"#C C takes {k}") for k in range(5)]
    clips[2] = Segment(**(asdict(clips[2]) | odd))
    (task,) = plan_shards(clips, "videos", "out", spec, clips_per_shard=8)
    text = json.dumps([SHARD_LAYOUT, "videos", asdict(spec), [asdict(c) for c in task.clips]], sort_keys=True)
    assert task.stamp == hashlib.sha256(text.encode()).hexdigest()


def test_plan_keeps_short_videos_whole_and_cuts_long_ones():
    clips = [Segment(f"{v}{k}", v, float(k), k + 1.0, 0) for v, n in (("b", 3), ("a", 2), ("c", 7)) for k in range(n)]
    plan = plan_shards(clips, "videos", "out", FrameSpec(2), clips_per_shard=4)
    assert [[c.clip_id for c in task.clips] for task in plan] == [
        ["a0", "a1"],
        ["b0", "b1", "b2"],  # b does not fit beside a: it starts a shard
        ["c0", "c1", "c2", "c3"],  # c is longer than a shard: cut in time order
        ["c4", "c5", "c6"],
    ]
    assert plan == plan_shards(clips[::-1], "videos", "out", FrameSpec(2), clips_per_shard=4)  # deterministic


def test_a_truncated_shard_is_named_and_decoded_again(tmp_path, ego4d_dir, caplog):
    segments = real_clips(ego4d_dir)[:10]
    spec = FrameSpec(num_frames=2, views=2, size=16)
    extract(segments, [], ego4d_dir, tmp_path / "clean", spec, clips_per_shard=4, max_failure_fraction=1)
    out = tmp_path / "resumed"
    extract(segments, [], ego4d_dir, out, spec, clips_per_shard=4, max_failure_fraction=1)
    shard, part = out / "shards" / "shard-00001.arrow", out / "parts" / "shard-00002.parquet"
    for damaged in (shard, part):
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    shards = FrameShards(out)  # the index comes from the manifest; a shard is read with its first clip
    with pytest.raises(ShardReadError, match=str(shard)):
        for clip in shards.clip_ids:
            shards.jpegs(clip)
    with caplog.at_level(logging.WARNING, logger="eva02at.data.extract"):
        summary = extract(segments, [], ego4d_dir, out, spec, clips_per_shard=4, max_failure_fraction=1)
    assert summary.written_shards == 2 and summary.kept_shards == 1
    assert f"{shard} does not match its manifest part" in caplog.text and f"{part}: cannot read" in caplog.text
    for name in (
        "manifest.parquet",
        "shards/shard-00000.arrow",
        "shards/shard-00001.arrow",
        "shards/shard-00002.arrow",
    ):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_a_damaged_video_gives_the_same_manifest_bytes_every_run(tmp_path, ego4d_dir):
    segments = [Segment(f"c{k}", "corrupted.mp4", k, k + 1.0, 0) for k in range(5)]
    for run in ("one", "two"):
        extract(segments, [], ego4d_dir, tmp_path / run, FrameSpec(2, size=16), max_failure_fraction=1)
    rows = pq.read_table(tmp_path / "one" / MANIFEST).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error", "error"]  # breaks at frame 30 of 50
    assert "Invalid data" in rows[3]["error"]
    assert (tmp_path / "one" / MANIFEST).read_bytes() == (tmp_path / "two" / MANIFEST).read_bytes()


def test_segments_just_past_the_end_or_before_the_start_are_clamped_and_counted(tmp_path, ego4d_dir):
    charades = tmp_path / "charades.csv"  # CLIP has 60 frames at 30 fps: 2.0 s
    charades.write_text("id,length\nexact,2.00\nrounded,2.03\nbeyond,2.04\n")
    egoclip = tmp_path / "egoclip.tsv"
    egoclip.write_text("video_uid\tclip_start\tclip_end\tclip_text\nclip\t-0.42\t0.8\t#C C opens\n")
    segments, errors = read_segments("charades", Source(str(charades), pattern=CLIP))
    clips, more = read_segments("egoclip", Source(str(egoclip), pattern=CLIP))
    assert errors == more == [] and clips[0].start == 0.0 and clips[0].clamped == (CLAMP_NEGATIVE_START,)
    summary = extract(segments + clips, [], ego4d_dir, tmp_path / "out", FrameSpec(2, size=16), max_failure_fraction=1)
    rows = {r["clip_id"]: r for r in pq.read_table(tmp_path / "out" / MANIFEST).to_pylist()}
    assert rows["exact"]["clamped"] == [] and rows["exact"]["frame_indices"] == [[15, 45]]
    assert rows["rounded"]["clamped"] == [CLAMP_END_PAST_VIDEO] and rows["rounded"]["frame_indices"] == [[15, 45]]
    assert rows["beyond"]["status"] == "error" and "past the end" in rows["beyond"]["error"]
    assert rows["clip_0"]["clamped"] == [CLAMP_NEGATIVE_START] and rows["clip_0"]["status"] == "ok"
    assert summary.clamped == {CLAMP_END_PAST_VIDEO: 1, CLAMP_NEGATIVE_START: 1}
    assert "1 end_past_video, 1 negative_start" in str(summary)


def test_a_full_disk_stops_with_one_line_naming_the_shard_and_a_rerun_gives_the_same_bytes(
    tmp_path, ego4d_dir, monkeypatch
):
    segments = real_clips(ego4d_dir)[:12]
    spec = FrameSpec(num_frames=2, size=16)
    extract(segments, [], ego4d_dir, tmp_path / "roomy", spec, clips_per_shard=4, max_failure_fraction=1)
    real_write = extract_module.write_shard

    def write_on_a_full_disk(path, views):  # the second shard's writer meets a full disk
        if path.name != "shard-00001.arrow":
            return real_write(path, views)
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"ARROW1 half a shard")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(extract_module, "write_shard", write_on_a_full_disk)
    full = tmp_path / "full"
    with pytest.raises(DiskFull, match=r"shard-00001\.arrow: no space left on its file system") as err:
        extract(segments, [], ego4d_dir, full, spec, clips_per_shard=4, max_failure_fraction=1)
    assert "\n" not in str(err.value)
    assert not (full / MANIFEST).exists() and not (full / "shards" / "shard-00001.arrow").exists()
    assert not [p for p in full.rglob("*") if p.name.startswith(".")]  # no temporary file left
    monkeypatch.undo()
    extract(segments, [], ego4d_dir, full, spec, clips_per_shard=4, max_failure_fraction=1)  # space again
    made = sorted(p.relative_to(full) for p in full.rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(tmp_path / "roomy") for p in (tmp_path / "roomy").rglob("*") if p.is_file())
    assert all((full / p).read_bytes() == (tmp_path / "roomy" / p).read_bytes() for p in made)


def test_resume_keeps_shards_by_size_and_decodes_again_one_whose_checksum_changed(tmp_path, ego4d_dir, caplog):
    segments = real_clips(ego4d_dir)[:10]
    spec = FrameSpec(num_frames=2, size=16)
    extract(segments, [], ego4d_dir, tmp_path / "clean", spec, clips_per_shard=4, max_failure_fraction=1)
    out = tmp_path / "resumed"
    first = extract(segments, [], ego4d_dir, out, spec, clips_per_shard=4, max_failure_fraction=1)
    flipped = out / "shards" / "shard-00000.arrow"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum, checked while the rest decodes, sees it
    flipped.write_bytes(bytes(data))
    (out / "parts" / "shard-00002.parquet").unlink()
    with caplog.at_level(logging.WARNING, logger="eva02at.data.extract"):
        summary = extract(segments, [], ego4d_dir, out, spec, clips_per_shard=4, max_failure_fraction=1)
    assert summary.written_shards == 2 and summary.kept_shards == first.written_shards - 2
    assert f"{flipped} does not match its manifest part" in caplog.text and "(checksum)" in caplog.text
    for path in sorted((tmp_path / "clean").glob("**/*.*")):
        name = path.relative_to(tmp_path / "clean")
        assert (out / name).read_bytes() == path.read_bytes(), name


def test_a_manifest_written_in_pieces_is_the_whole_table(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        {"clip_id": f"c{k}", "source": "v.mp4", "line": k + 2, "start": float(k), "end": k + 1.0, "text": "t",
         "frame_indices": [[k]], "height": 8, "width": 8, "status": "ok", "error": "", "shard": "s", "clamped": []}
        for k in range(40)
    ]  # fmt: skip
    cuts = sorted(rng.choice(np.arange(1, 40), 6, replace=False).tolist())
    pieces = [pa.Table.from_pylist(rows[a:b], schema=MANIFEST_SCHEMA) for a, b in pairwise([0, *cuts, 40])]
    write_manifest_tables(tmp_path / "m.parquet", iter(pieces), {"spec": "x"}, rows_per_group=7)
    whole = pq.ParquetFile(tmp_path / "m.parquet")
    assert whole.read().to_pylist() == rows and whole.schema_arrow.metadata == {b"spec": b"x"}
    assert max(whole.metadata.row_group(g).num_rows for g in range(whole.num_row_groups)) == 7
