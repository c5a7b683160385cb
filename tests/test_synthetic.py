"""The synthetic sample: reproducible bytes, real table formats, and pictures that determine captions."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from numpy._core._multiarray_umath import __cpu_dispatch__
from scipy import stats

from eva02at.core.config import ConfigError, from_dict
from eva02at.data.annotations import Source, parse_timestamp
from eva02at.data.formats.registered import read_segments
from eva02at.data.synthetic import SampleParams, generate_sample
from eva02at.data.synthetic import generate as generate_module
from eva02at.data.synthetic.captions import class_subset, third_person
from eva02at.data.synthetic.ek100 import EK100_COLUMNS
from eva02at.data.synthetic.encode import write_video
from eva02at.data.synthetic.layout import Shot, VideoJob
from eva02at.data.synthetic.motion import MOTIONS, pose_track
from eva02at.data.synthetic.scene import Renderer
from tests.sample_probe import jobs as probe_jobs

SOURCE = Path(__file__).resolve().parents[1] / "data" / "sample" / "ek100"
PROBE = Path(__file__).resolve().parent / "sample_probe.py"
TINY = {
    "source": str(SOURCE),
    "width": 64,
    "height": 36,
    "segments_per_video": [3, 6],
    "ek100_train_segments": 24,
    "ek100_test_segments": 16,
    "egoclip_clips": 30,
    "egomcq_videos": 5,
    "egomcq_questions": 6,
    "charades_videos": 4,
    "charades_train_videos": 3,
    "charades_classes": 6,
    "workers": 1,
}


def _tiny(out: Path, **overrides) -> SampleParams:
    return from_dict(SampleParams, {**TINY, "out": str(out), **overrides}, "sample")


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _rows(path: Path, delimiter: str = ",") -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "synthetic"
    generate_sample(_tiny(out), progress=False)
    return out


def test_same_seed_gives_identical_bytes_and_another_seed_differs(sample, tmp_path):
    again = tmp_path / "again"
    generate_sample(_tiny(again, workers=2), progress=False)  # process count must not matter
    other = tmp_path / "other"
    generate_sample(_tiny(other, seed=1), progress=False)
    first, second, third = _hashes(sample), _hashes(again), _hashes(other)
    assert first == second
    assert len(first) > 20
    changed = [name for name in first if third.get(name) != first[name]]
    assert any(name.endswith(".csv") for name in changed)
    assert any(name.endswith((".mp4", ".MP4")) for name in changed)


def _probe(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(PROBE), *args], env=os.environ | env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_frames_and_files_are_the_same_bits_without_the_cpus_simd_code():
    """What another machine would do differently: numpy and FFmpeg choose SIMD kernels by CPU when a process
    starts. A fresh process with all of them switched off draws and encodes the same bits as this CPU's."""
    here = _probe({})
    plain = _probe({"NPY_DISABLE_CPU_FEATURES": " ".join(__cpu_dispatch__)}, "--plain-ffmpeg")
    assert plain["numpy_float32_sin"].startswith("baseline") and plain["ffmpeg_flags"] == 0  # really switched off
    assert plain["frames"] == here["frames"]  # drawing, compared before encoding
    assert plain["files"] == here["files"]  # colour conversion and encoding


def test_encoding_the_same_frames_again_gives_the_same_bytes(tmp_path):
    """x264 picks its code by CPU, and its AVX-512 code encodes the same frames to other bytes from one call to
    the next (measured); the encoder is held to code that does not. Encoded again with the heap disturbed in
    between, every file must be the same bits."""
    subset = class_subset(SOURCE, 8, 12)
    renderer = Renderer(subset.verbs, list(subset.nouns), (64, 36), 10, seed=0)
    drawn = {job.path: list(renderer.frames(job)) for job in probe_jobs(list(subset.verbs), list(subset.nouns))}

    def encoded() -> dict[str, str]:
        for name, frames in drawn.items():
            write_video(tmp_path / name, frames, 10)
        return {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in drawn}

    first, held = encoded(), []
    for size in range(1, 13):
        held.append(b"\xab" * (size * 100_003))
        assert encoded() == first, f"encode {size + 1} differs"


def test_failed_run_leaves_previous_output_untouched(sample, tmp_path, monkeypatch):
    out = tmp_path / "synthetic"
    out.mkdir()
    (out / "old.txt").write_text("previous sample")
    calls = []

    def broken(path, frames, fps):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return write_video(path, frames, fps)

    monkeypatch.setattr(generate_module, "write_video", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_sample(_tiny(out), progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_ek100_tables_have_real_columns_and_segments_inside_videos(sample):
    folder, videos = sample / "epic-kitchens" / "annotations", sample / "epic-kitchens" / "videos"
    people = {}
    for split in ("train", "test"):
        path = folder / f"EPIC_100_retrieval_{split}.csv"
        columns, rows = _rows(path)
        assert tuple(columns) == EK100_COLUMNS == tuple(_rows(SOURCE / "EPIC_100_retrieval_test.csv")[0])
        segments, errors = read_segments("ek100", Source(str(path)))
        assert errors == [] and len(segments) == len(rows) > 0
        people[split] = {r["participant_id"] for r in rows}
        frames = {s.video: _frame_count(videos / s.video) for s in segments}
        for row, segment in zip(rows, segments, strict=True):
            assert row["narration_id"].startswith(row["video_id"] + "_")
            assert 1 <= int(row["start_frame"]) < int(row["stop_frame"]) <= frames[segment.video]
            assert int(row["start_frame"]) == round(segment.start * 10) + 1
            assert int(row["stop_frame"]) == round(segment.end * 10)
            assert segment.start <= parse_timestamp(row["narration_timestamp"]) <= segment.end
    assert people["train"] and people["test"] and not people["train"] & people["test"]
    info = {r["video_id"]: r for r in _rows(folder / "EPIC_100_video_info.csv")[1]}
    for path in videos.rglob("*.MP4"):
        assert float(info[path.stem]["duration"]) == pytest.approx(_frame_count(path) / 10)


def test_ek100_labels_are_real_rows_and_sentences_are_keyed_by_id(sample):
    folder = sample / "epic-kitchens" / "annotations"
    label_columns = ("narration", "verb", "verb_class", "all_nouns", "all_noun_classes")
    real_test = {tuple(r[c] for c in label_columns) for r in _rows(SOURCE / "EPIC_100_retrieval_test.csv")[1]}
    _, test = _rows(folder / "EPIC_100_retrieval_test.csv")
    assert all(tuple(r[c] for c in label_columns) in real_test for r in test)
    real_train = {
        (r["narration"], r["verb"], r["verb_class"], r["nouns"], r["noun_classes"])
        for r in _rows(SOURCE / "EPIC_100_retrieval_train_sentence.csv")[1]
    }
    _, train = _rows(folder / "EPIC_100_retrieval_train.csv")
    assert all(tuple(r[c] for c in label_columns) in real_train for r in train)

    # the class subset: the most frequent classes of the real test split (ties are absent at the top)
    real_rows = _rows(SOURCE / "EPIC_100_retrieval_test.csv")[1]
    top_verbs = {int(c) for c, _ in Counter(r["verb_class"] for r in real_rows).most_common(8)}
    top_nouns = {int(c) for c, _ in Counter(r["noun_class"] for r in real_rows).most_common(12)}
    for row in train + test:
        assert int(row["verb_class"]) in top_verbs
        assert set(ast.literal_eval(row["all_noun_classes"])) <= top_nouns

    columns, sentences = _rows(folder / "EPIC_100_retrieval_test_sentence.csv")
    assert columns == ["narration_id", "narration"]
    by_id = {r["narration_id"]: r for r in test}
    assert sorted(s["narration"] for s in sentences) == sorted({r["narration"] for r in test})
    assert all(by_id[s["narration_id"]]["narration"] == s["narration"] for s in sentences)
    columns, sentences = _rows(folder / "EPIC_100_retrieval_train_sentence.csv")
    assert columns == ["narration_id", "narration", "verb_class", "noun_classes", "verb", "nouns"]
    by_id = {r["narration_id"]: r for r in train}
    assert len(sentences) == len({r["narration"] for r in train})
    for s in sentences:
        row = by_id[s["narration_id"]]
        assert (row["narration"], row["verb_class"], row["all_noun_classes"], row["all_nouns"]) == (
            s["narration"],
            s["verb_class"],
            s["noun_classes"],
            s["nouns"],
        )


def test_egoclip_and_egomcq_formats(sample):
    folder, videos = sample / "ego4d" / "annotations", sample / "ego4d" / "videos"
    columns, rows = _rows(folder / "egoclip.csv", delimiter="\t")
    assert columns[:4] == ["video_uid", "video_dur", "narration_source", "narration_ind"]
    segments, errors = read_segments("egoclip", Source(str(folder / "egoclip.csv")))
    assert errors == [] and len(segments) == len(rows) == 30
    for row in rows:
        assert row["clip_text"].startswith("#C C ")
        assert len(ast.literal_eval(row["tag_verb"])) == 1 and ast.literal_eval(row["tag_noun"])
        assert float(row["clip_end"]) <= float(row["video_dur"])
        assert float(row["clip_start"]) <= float(row["narration_time"]) <= float(row["clip_end"])
    lengths = {uid: _frame_count(videos / f"{uid}.mp4") for uid in {r["video_uid"] for r in rows}}
    assert all(float(r["clip_end"]) * 10 <= lengths[r["video_uid"]] + 1e-6 for r in rows)

    questions = json.loads((folder / "egomcq.json").read_text())
    assert len(questions) == 6 and {q["types"] for q in questions.values()} == {1, 2}
    mcq_uids = set()
    for q in questions.values():
        choices = [q["choices"][str(i)] for i in range(5)]
        assert set(q["choices"]) == {"0", "1", "2", "3", "4"} and 0 <= q["answer"] < 5
        assert q["query"]["clip_text"] == choices[q["answer"]]["clip_text"]
        assert sum(c["clip_text"] == q["query"]["clip_text"] for c in choices) == 1
        uids = {c["video_uid"] for c in choices}
        assert len(uids) == (5 if q["types"] == 1 else 1)
        mcq_uids |= uids
        assert all(set(c) == {"video_uid", "clip_start", "clip_end", "clip_text"} for c in choices)
    assert not mcq_uids & set(lengths)
    assert all((videos / f"{uid}.mp4").is_file() for uid in mcq_uids)


@pytest.mark.parametrize(("split", "count"), [("test", 4), ("train", 3)])
def test_charades_ego_format(sample, split, count):
    folder = sample / "charades-ego" / "annotations"
    names = dict(line.split(" ", 1) for line in (folder / "Charades_v1_classes.txt").read_text().splitlines())
    assert len(names) == 6 and len(set(names.values())) == 6
    columns, rows = _rows(folder / f"CharadesEgo_v1_{split}_only1st.csv")
    required = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length"
    assert set(required.split(",")) <= set(columns) and len(rows) == count
    other = "train" if split == "test" else "test"
    assert not {r["id"] for r in rows} & {r["id"] for r in _rows(folder / f"CharadesEgo_v1_{other}_only1st.csv")[1]}
    for row in rows:
        actions = [a.split(" ") for a in row["actions"].split(";")]
        assert 2 <= len(actions) <= 4 and len({a[0] for a in actions}) == len(actions)
        for label, start, end in actions:
            assert label in names and 0 <= float(start) < float(end) <= float(row["length"])
        frames = _frame_count(sample / "charades-ego" / "videos" / f"{row['id']}.mp4")
        assert float(row["length"]) == pytest.approx(frames / 10)


def test_third_person_narrations():
    assert third_person("take plate") == "#C C takes plate"
    assert third_person("put down plate") == "#C C puts down plate"
    assert third_person("wash hands") == "#C C washes hands"
    assert third_person("dry hands") == "#C C dries hands"
    assert third_person("mix") == "#C C mixes"
    assert third_person("still cleaning plate") == "#C C is still cleaning plate"


def test_bad_params_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="colour"):
        from_dict(SampleParams, {"colour": 1}, "sample")
    with pytest.raises(ValueError, match="segment_seconds"):
        _tiny(tmp_path, segment_seconds=[2.0, 1.0])
    with pytest.raises(ValueError, match="no motion"):
        Renderer({0: "juggle"}, [1], (64, 36), 10, 0)


@pytest.mark.parametrize("verb", sorted(MOTIONS))
def test_every_frame_pose_is_uniform_whatever_the_verb(verb):
    rng = np.random.default_rng(0)
    tracks = np.stack([pose_track(rng, MOTIONS[verb], 20, 10) for _ in range(800)])  # (N, T, 4)
    for frame in (0, 10, 19):
        for axis in range(4):
            assert stats.kstest(tracks[:, frame, axis], "uniform").pvalue > 1e-4


def _pose_features(frames: np.ndarray) -> np.ndarray:
    """Per frame: object centre, size, stripe direction (from saturated pixels) and mean colour: (T, 8)."""
    pixels = frames.astype(np.float64) / 255
    value, low = pixels.max(-1), pixels.min(-1)
    mask = ((value - low) / np.maximum(value, 1e-6) > 0.6) & (value > 0.15)  # objects only: vivid colours
    features = np.zeros((len(frames), 8))
    for t in range(len(frames)):
        ys, xs = np.nonzero(mask[t])
        if len(xs) == 0:
            continue
        dark = value[t][ys, xs] < 0.6 * value[t][ys, xs].max()  # the marker stripe
        cx, cy = xs.mean(), ys.mean()
        direction = np.array([xs[dark].mean() - cx, ys[dark].mean() - cy]) if dark.any() else np.zeros(2)
        direction /= np.linalg.norm(direction) + 1e-9
        colour = pixels[t][ys[~dark], xs[~dark]].mean(0) if (~dark).any() else np.zeros(3)
        features[t] = [cx, cy, np.sqrt(len(xs)), *direction, *colour]
    return features


def _motion_features(pose: np.ndarray) -> np.ndarray:
    """Per clip: typical frame-to-frame change of centre, size and stripe angle, and how jittery it is."""
    step = np.diff(pose[:, :3], axis=0)  # (T-1, 3)
    a, b = pose[:-1, 3:5], pose[1:, 3:5]
    turn = np.arctan2(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0], (a * b).sum(1))
    return np.concatenate([np.median(step, 0), [np.median(turn)], np.abs(step).mean(0)])


def _nearest_centroid(train_x, train_y, test_x, test_y) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-9
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    labels = np.unique(train_y)
    centroids = np.stack([train_x[train_y == c].mean(0) for c in labels])
    predicted = labels[((test_x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
    return float((predicted == test_y).mean())


def _factorial_clips(renderer, verbs, nouns, count, look, seed, path):
    """``count`` clips with verb and noun drawn independently, in one video; returns clips and labels."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(len(verbs), size=count), rng.integers(len(nouns), size=count)], 1)
    lengths = rng.integers(15, 26, size=count)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    shots = tuple(
        Shot(int(s), int(s + n), verbs[v], (nouns[k],)) for s, n, (v, k) in zip(starts, lengths, labels, strict=True)
    )
    write_video(path, renderer.frames(VideoJob(path.name, look, int(lengths.sum()), shots)), 10)
    frames = _decode(path)
    return [frames[s : s + n] for s, n in zip(starts, lengths, strict=True)], labels


def test_single_frames_show_the_noun_and_only_motion_shows_the_verb(tmp_path):
    subset = class_subset(SOURCE, 8, 12)
    verbs, nouns = list(subset.verbs), list(subset.nouns)
    renderer = Renderer(subset.verbs, nouns, (128, 72), 10, seed=0)
    train, train_y = _factorial_clips(renderer, verbs, nouns, 192, "kitchen-a", 1, tmp_path / "train.mp4")
    test, test_y = _factorial_clips(renderer, verbs, nouns, 96, "kitchen-b", 2, tmp_path / "test.mp4")
    train_pose = [_pose_features(clip) for clip in train]
    test_pose = [_pose_features(clip) for clip in test]
    single_train = np.stack([p[len(p) // 2] for p in train_pose])
    single_test = np.stack([p[len(p) // 2] for p in test_pose])
    motion_train = np.stack([_motion_features(p) for p in train_pose])
    motion_test = np.stack([_motion_features(p) for p in test_pose])

    noun_from_frame = _nearest_centroid(single_train, train_y[:, 1], single_test, test_y[:, 1])
    verb_from_frame = _nearest_centroid(single_train, train_y[:, 0], single_test, test_y[:, 0])
    verb_from_motion = _nearest_centroid(motion_train, train_y[:, 0], motion_test, test_y[:, 0])
    assert noun_from_frame > 0.6  # chance 1/12
    assert verb_from_frame < 0.3  # chance 1/8
    assert verb_from_motion > 0.55
