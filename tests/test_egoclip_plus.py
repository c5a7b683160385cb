"""EgoClip+: LaViLa's caption pickles read safely into the caption table, and one caption per clip and caption set
drawn per epoch, the same after a resume and with any number of loader workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from eva02at.core.errors import BadInput
from eva02at.data.annotations import Segment
from eva02at.data.egoclip_plus import (
    caption_table,
    decoded_only,
    read_caption_pickle,
    read_caption_table,
    write_caption_table,
)
from eva02at.data.synthetic.captions import Caption
from eva02at.data.synthetic.ego4d import EGOCLIP_PLUS, plan_egoclip_plus
from eva02at.train.data import CaptionSets, EpochBatches
from eva02at.train.sampling import RelevantPairSampler

VIDEOS = ("0a1b2c3d-0000-4000-8000-000000000001", "0a1b2c3d-0000-4000-8000-000000000002")


def egoclip_segments(count: int = 12) -> list[Segment]:
    """EgoClip clips as the egoclip reader returns them: ``<video_uid>_<row>``, 1.5 s apart, the first one
    starting before the video (EgoClip's negative start, clamped to 0)."""
    segments = []
    for row in range(count):
        video = VIDEOS[row % 2]
        start = max(0.0, round(1.5 * row - 0.7, 3))
        segments.append(Segment(f"{video}_{row}", f"{video}.mp4", start, round(1.5 * row + 1.2, 3), row + 2))
    return segments


def published_rows(segments: list[Segment], per_clip: int, prefix: str) -> list[tuple]:
    """Rows in LaViLa's published structure: (video_uid, start_second, end_second, [captions])."""
    rows = []
    for number, s in enumerate(segments):
        start = s.start - 0.7 if s.start == 0 else s.start + 1e-5  # the pickle's own rounding and negative start
        rows.append((Path(s.video).stem, start, s.end, [f"{prefix} {number} {k}" for k in range(per_clip)]))
    return rows


def write_pickle(path: Path, data: object) -> Path:
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


@pytest.fixture
def caption_files(tmp_path) -> tuple[list[Segment], dict[str, Path]]:
    segments = egoclip_segments()
    sets = {
        "rephraser": write_pickle(tmp_path / "rephraser.pkl", published_rows(segments, 3, "rephrased")),
        "narrator": write_pickle(tmp_path / "narrator.pkl", published_rows(segments, 10, "narrated")),
    }
    return segments, sets


def test_the_table_holds_every_caption_of_every_set_under_its_egoclip_clip(caption_files, tmp_path):
    segments, sets = caption_files
    table = caption_table(segments, sets)
    expected = [
        (segment.clip_id, name, index, text)
        for name, path in sets.items()
        for segment, (_, _, _, texts) in zip(segments, pickle.loads(path.read_bytes()), strict=True)
        for index, text in enumerate(texts)
    ]
    assert list(zip(*table.to_pydict().values(), strict=True)) == expected
    assert table.num_rows == len(segments) * (3 + 10)
    write_caption_table(table, tmp_path / "captions" / "egoclip_plus.parquet")
    assert read_caption_table(tmp_path / "captions" / "egoclip_plus.parquet").equals(table)


class Trap:
    """Any object a pickle could rebuild by calling code: loading it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_pickle_holding_an_object_is_refused_naming_the_file_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = write_pickle(tmp_path / "narrator.pkl", [(VIDEOS[0], 0.0, 1.0, ["#C C opens drawer"]), Trap(marker)])
    with pytest.raises(BadInput, match=r"narrator\.pkl: not a plain caption pickle \(forbidden object pathlib") as err:
        read_caption_pickle(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"rows": []}, "expected a list"),
        ([(VIDEOS[0], 0.0, 1.0)], "row 0 is not a"),
        ([(VIDEOS[0], 2.0, 1.0, ["text"])], "row 0 needs a video uid and start <= end"),
        ([(VIDEOS[0], 0.0, 1.0, ["text"]), (VIDEOS[0], 0.0, 1.0, [])], "row 1 .* non-empty list"),
    ],
)
def test_a_pickle_of_another_structure_is_refused_naming_file_and_row(tmp_path, data, problem):
    path = write_pickle(tmp_path / "captions.pkl", data)
    with pytest.raises(BadInput, match=rf"captions\.pkl: {problem}"):
        read_caption_pickle(path)


def test_rows_without_an_egoclip_clip_fail_above_the_allowed_fraction_and_are_counted_below(caption_files, caplog):
    segments, sets = caption_files
    with pytest.raises(BadInput, match=r"rephraser\.pkl: 2 of 12 rows match no EgoClip clip"):
        caption_table(segments[:10], sets)
    table = caption_table(segments[:10], sets, max_unmatched_fraction=0.2)
    assert table.num_rows == 10 * (3 + 10)
    assert "2 of 12 rows match no EgoClip clip" in caplog.text


class DrawnTexts(Dataset):
    """The caption text each sampled item gets (what ClipPairs returns beside the frames)."""

    def __init__(self, sets: CaptionSets):
        self.sets = sets

    def __len__(self) -> int:
        return len(self.sets.clip_ids)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[str, str]:
        _, video, caption = item
        return self.sets.clip_ids[video], self.sets.texts[caption]


def drawn(sets: CaptionSets, epoch: int, batch_size: int, workers: int, start_step: int = 0) -> list[tuple[str, str]]:
    sampler = RelevantPairSampler(sets, batch_size, seed=7)
    sampler.set_epoch(epoch, start_step)
    loader = DataLoader(
        DrawnTexts(sets), batch_sampler=EpochBatches(sampler, epoch), num_workers=workers, collate_fn=list
    )
    return [pair for batch in loader for pair in batch]


def test_an_epoch_visits_each_clip_once_per_set_with_one_of_its_captions(caption_files):
    segments, sets = caption_files
    caption_sets = CaptionSets(caption_table(segments, sets))
    assert caption_sets.shape == (2 * len(segments), len(segments) * 13)
    pairs = drawn(caption_sets, epoch=0, batch_size=4, workers=0)
    assert sorted(clip for clip, _ in pairs) == sorted([s.clip_id for s in segments] * 2)
    by_clip: dict[str, list[str]] = {}
    for clip, text in pairs:
        by_clip.setdefault(clip, []).append(text)
    for number, segment in enumerate(segments):
        rephrased, narrated = sorted(by_clip[segment.clip_id], key=lambda t: t.startswith("narrated"))
        assert rephrased in [f"rephrased {number} {k}" for k in range(3)]
        assert narrated in [f"narrated {number} {k}" for k in range(10)]


def test_draws_are_the_same_after_a_resume_and_with_any_worker_count_and_change_with_the_epoch(caption_files):
    segments, sets = caption_files
    caption_sets = CaptionSets(caption_table(segments, sets))
    first = drawn(caption_sets, epoch=3, batch_size=4, workers=0)
    assert drawn(caption_sets, epoch=3, batch_size=4, workers=2) == first
    assert drawn(caption_sets, epoch=3, batch_size=4, workers=0, start_step=2) == first[2 * 4 :]
    assert drawn(caption_sets, epoch=3, batch_size=4, workers=2, start_step=5) == first[5 * 4 :]
    later = drawn(caption_sets, epoch=4, batch_size=4, workers=0)
    assert sorted(later) != sorted(first)  # a new caption draw, not only a new order


def test_a_table_whose_captions_are_not_grouped_by_clip_is_refused(caption_files):
    segments, sets = caption_files
    table = caption_table(segments, sets)
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    with pytest.raises(BadInput, match="captions must be consecutive rows"):
        CaptionSets(shuffled, "shuffled.parquet")


def test_the_synthetic_sample_writes_both_sets_in_the_published_structure(tmp_path):
    captions = [
        Caption("open drawer", "open", 3, ("drawer",), (8,)),
        Caption("open the drawer", "open", 3, ("drawer",), (8,)),
        Caption("take plate", "take", 0, ("plate",), (2,)),
    ]
    segments = egoclip_segments(6)
    rows = [
        {
            "video_uid": Path(s.video).stem,
            "clip_start": s.start,
            "clip_end": s.end,
            "tag_verb": str([[3, 0][n % 2]]),
            "tag_noun": str([[8, 2][n % 2]]),
        }
        for n, s in enumerate(segments)
    ]
    sets = plan_egoclip_plus(np.random.default_rng(0), rows, captions)
    paths = {}
    for name, (filename, per_clip) in EGOCLIP_PLUS.items():
        paths[name] = write_pickle(tmp_path / filename, sets[name])
        loaded = read_caption_pickle(paths[name])
        assert [len(texts) for *_, texts in loaded] == [per_clip] * len(segments)
        for number, (*_, texts) in enumerate(loaded):
            allowed = {"C opens drawer", "C opens the drawer"} if number % 2 == 0 else {"C takes plate"}
            allowed = allowed if name == "rephraser" else {f"#C {text}" for text in allowed}
            assert set(texts) <= allowed
    table = caption_table(segments, paths)
    assert table.num_rows == len(segments) * (3 + 10)
    assert torch.tensor(table.column("caption_index").to_numpy()).max().item() == 9


def test_clips_without_frames_are_left_out_and_named(caption_files):
    segments, sets = caption_files
    table = caption_table(segments, sets)
    decoded = [s.clip_id for s in segments if s.line % 3]  # every third clip failed to decode
    kept, missing = decoded_only(table, decoded)
    assert sorted(missing) == sorted(s.clip_id for s in segments if s.line % 3 == 0)
    assert set(kept.column("clip_id").to_pylist()) == set(decoded)
    assert kept.num_rows == len(decoded) * 13
    assert CaptionSets(kept).shape == (2 * len(decoded), len(decoded) * 13)
