"""Each annotation reader needs only the columns its use needs: real EK100 CSVs read whole, fixtures in the
published EgoClip, Charades-Ego and video-list layouts, and a bad row is an error row, never a traceback."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from eva02at.core.errors import BadInput
from eva02at.data.annotations import Source
from eva02at.data.formats.registered import read_segments
from eva02at.evaluation.benchmarks.ek100_mir import read_sentences

EK100 = Path(__file__).resolve().parents[1] / "data" / "sample" / "ek100"


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_real_ek100_test_row_is_a_segment_with_or_without_its_narration_timestamp():
    rows = csv_rows(EK100 / "EPIC_100_retrieval_test.csv")
    untimed = [r["narration_id"] for r in rows if not r["narration_timestamp"]]
    segments, errors = read_segments("ek100", Source(str(EK100 / "EPIC_100_retrieval_test.csv")))
    assert errors == []
    assert len(rows) == len(segments) == 9668
    assert len(untimed) == 70 and untimed[:3] == ["P02_12_293", "P02_15_39", "P02_15_40"]
    assert [s.clip_id for s in segments] == [r["narration_id"] for r in rows]
    by_id = {s.clip_id: s for s in segments}
    first = by_id["P02_12_293"]
    row = next(r for r in rows if r["narration_id"] == "P02_12_293")
    assert first.video == f"{row['participant_id']}/{row['video_id']}.MP4" and first.text == row["narration"]


def test_every_real_ek100_sentence_is_read():
    for name, count in (
        ("EPIC_100_retrieval_train_sentence.csv", 15989),
        ("EPIC_100_retrieval_test_sentence.csv", 3842),
    ):
        rows = csv_rows(EK100 / name)
        ids, texts = read_sentences(EK100 / name)
        assert len(ids) == len(rows) == count
        assert ids == [r["narration_id"] for r in rows] and all(texts)


def ek100_table(tmp_path: Path, edit: dict[str, str], drop: str = "") -> Path:
    """The first real test row twice, the second edited; ``drop`` removes a column from the header."""
    header = list(csv_rows(EK100 / "EPIC_100_retrieval_test.csv")[0])
    row = csv_rows(EK100 / "EPIC_100_retrieval_test.csv")[0]
    columns = [c for c in header if c != drop]
    path = tmp_path / "ek100.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([row, {**row, **edit}])
    return path


@pytest.mark.parametrize(
    "column, needed",
    [
        ("narration_timestamp", False),
        ("narration", False),
        ("start_frame", False),
        ("noun", False),
        ("verb_class", True),
        ("all_noun_classes", True),
        ("stop_timestamp", True),
        ("participant_id", True),  # named by the video path pattern
    ],
)
def test_an_empty_ek100_field_is_an_error_row_only_where_it_is_needed(tmp_path, column, needed):
    segments, errors = read_segments("ek100", Source(str(ek100_table(tmp_path, {column: ""}))))
    assert len(segments) == (1 if needed else 2)
    assert [(e.line, e.reason) for e in errors] == ([(3, f"missing field(s) ['{column}']")] if needed else [])


def test_an_unneeded_ek100_column_may_be_absent_and_a_needed_one_stops_the_read(tmp_path):
    segments, errors = read_segments("ek100", Source(str(ek100_table(tmp_path, {}, drop="narration_timestamp"))))
    assert (len(segments), errors) == (2, [])
    with pytest.raises(BadInput, match=r"missing column\(s\) \['video_id'\]"):
        read_segments("ek100", Source(str(ek100_table(tmp_path, {}, drop="video_id"))))


def test_egoclip_in_its_published_layout_needs_uid_times_and_text(tmp_path):
    header = "\t".join(
        [
            "video_uid",
            "video_dur",
            "narration_source",
            "narration_ind",
            "narration_time",
            "clip_start",
            "clip_end",
            "clip_text",
            "tag_verb",
            "tag_noun",
        ]
    )
    rows = [
        "v1\t100.0\tnarration_pass_1\t0\t1.5\t1.0\t2.0\t#C C opens a door\t[3]\t[5]",
        "v1\t\t\t\t\t3.0\t4.0\t#C C closes a door\t\t",  # only the needed fields
        "v1\t100.0\tnarration_pass_1\t2\t5.5\t5.0\t6.0\t\t[3]\t[5]",  # no text to pretrain on
    ]
    path = tmp_path / "egoclip.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    segments, errors = read_segments("egoclip", Source(str(path)))
    assert [(s.clip_id, s.start, s.end, s.text) for s in segments] == [
        ("v1_0", 1.0, 2.0, "#C C opens a door"),
        ("v1_1", 3.0, 4.0, "#C C closes a door"),
    ]
    assert [(e.line, e.reason) for e in errors] == [(4, "missing field(s) ['clip_text']")]


def test_charades_ego_in_its_published_layout_needs_id_and_length(tmp_path):
    header = ",".join(
        [
            "id",
            "subject",
            "scene",
            "quality",
            "relevance",
            "verified",
            "script",
            "objects",
            "descriptions",
            "actions",
            "length",
            "egocentric",
            "charades_video",
        ]
    )
    rows = [
        "AB12EGO,P1,Kitchen,6,7,Yes,A person opens a cupboard.,cupboard,,c000 0.0 3.1,12.35,Yes,AB12",
        "CD34EGO,,,,,,,,,,8.00,,",  # unlabelled and undescribed: still a clip
        "EF56EGO,P2,Kitchen,,,,,,,c001 1.0 2.0,,Yes,EF56",  # no length: no clip
    ]
    path = tmp_path / "charades.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    segments, errors = read_segments("charades", Source(str(path)))
    assert [(s.clip_id, s.video, s.end) for s in segments] == [
        ("AB12EGO", "AB12EGO.mp4", 12.35),
        ("CD34EGO", "CD34EGO.mp4", 8.0),
    ]
    assert [(e.line, e.reason) for e in errors] == [(4, "missing field(s) ['length']")]


def test_a_video_list_row_without_a_file_is_an_error_row(tmp_path):
    path = tmp_path / "clips.csv"
    path.write_text("file,video_uid\nmissing.mp4,\n,abc\n")
    segments, errors = read_segments("videolist", Source(str(path), str(tmp_path)))
    assert [(s.video, s.start, s.end) for s in segments] == [("missing.mp4", 0.0, 2.0)]  # decoding reports it
    assert [(e.line, e.reason) for e in errors] == [(3, "missing field(s) ['file']")]
