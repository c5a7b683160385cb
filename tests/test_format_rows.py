"""Every annotation format turns a bad row into an error row naming its line, never a traceback: an empty
needed field, text where a number or a time is needed, and a missing needed column (one error for the file,
naming the column). A new format copies one case of each table below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eva02at.core.errors import BadInput
from eva02at.data.annotations import Source
from eva02at.data.formats.registered import read_segments

# A good EK100 row (the real test split's first row, trimmed to the needed columns and the pattern's fields).
EK100_HEADER = "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,verb_class,all_noun_classes"
EK100_GOOD = "P01_11_0,P01,P01_11,00:00:00.00,00:00:02.61,3,[13]"
EGOCLIP_HEADER = "video_uid\tclip_start\tclip_end\tclip_text"
EGOCLIP_GOOD = "v1\t1.0\t2.0\t#C C opens a door"
CHARADES_HEADER = "id,length,actions"
CHARADES_GOOD = "AB12EGO,12.35,c000 0.0 3.1"

# (format, header, bad row, what the error names); the file holds the good row (line 2), then the bad one (line 3)
BAD_ROWS = [
    ("ek100", EK100_HEADER, "P01_11_1,P01,P01_11,,00:00:03.00,3,[13]", "missing field(s) ['start_timestamp']"),
    ("ek100", EK100_HEADER, "P01_11_1,P01,P01_11,00:00:01.00,soon,3,[13]", "bad timestamp 'soon'"),
    ("ek100", EK100_HEADER, "P01_11_1,P01,P01_11,00:00:01.00,00:00:03.00,open,[13]", "bad verb_class 'open'"),
    ("ek100", EK100_HEADER, "P01_11_1,P01,P01_11,00:00:01.00,00:00:03.00,3,tap", "bad class list 'tap'"),
    ("ek100", EK100_HEADER, 'P01_11_1,P01,P01_11,00:00:01.00,00:00:03.00,3,"[1,"', "bad class list '[1,'"),
    ("ek100", EK100_HEADER, "P01_11_1,,P01_11,00:00:01.00,00:00:03.00,3,[13]", "missing field(s) ['participant_id']"),
    ("egoclip", EGOCLIP_HEADER, "v1\t3.0\t\t#C C closes a door", "missing field(s) ['clip_end']"),
    ("egoclip", EGOCLIP_HEADER, "v1\tthree\t4.0\t#C C closes a door", "bad timestamp 'three'"),
    ("egoclip", EGOCLIP_HEADER, "\t3.0\t4.0\t#C C closes a door", "missing field(s) ['video_uid']"),
    ("charades", CHARADES_HEADER, "CD34EGO,,c001 1.0 2.0", "missing field(s) ['length']"),
    ("charades", CHARADES_HEADER, "CD34EGO,long,c001 1.0 2.0", "bad timestamp 'long'"),
    ("charades", CHARADES_HEADER, ",8.00,", "missing field(s) ['id']"),
]


def read(tmp_path: Path, format_name: str, text: str) -> tuple[list, list]:
    path = tmp_path / "annotations.csv"
    path.write_text(text)
    segments, errors = read_segments(format_name, Source(str(path), str(tmp_path)))
    return segments, [(e.line, e.reason) for e in errors]


@pytest.mark.parametrize(("format_name", "header", "row", "reason"), BAD_ROWS, ids=[r[-1] for r in BAD_ROWS])
def test_a_bad_row_is_an_error_row_naming_its_line_and_the_good_rows_stay(tmp_path, format_name, header, row, reason):
    good = {"ek100": EK100_GOOD, "egoclip": EGOCLIP_GOOD, "charades": CHARADES_GOOD}[format_name]
    segments, errors = read(tmp_path, format_name, f"{header}\n{good}\n{row}\n")
    assert len(segments) == 1 and segments[0].line == 2
    assert len(errors) == 1 and errors[0][0] == 3 and reason in errors[0][1]


@pytest.mark.parametrize(
    ("format_name", "header", "good", "column"),
    [
        ("ek100", EK100_HEADER, EK100_GOOD, "verb_class"),
        ("ek100", EK100_HEADER, EK100_GOOD, "video_id"),  # named by the video path pattern
        ("egoclip", EGOCLIP_HEADER, EGOCLIP_GOOD, "clip_text"),
        ("charades", CHARADES_HEADER, CHARADES_GOOD, "length"),
        ("videolist", "file,note", "a.mp4,x", "file"),
    ],
)
def test_a_missing_needed_column_is_one_error_for_the_file_naming_it(tmp_path, format_name, header, good, column):
    names = header.replace("\t", ",").split(",")
    keep = [k for k, name in enumerate(names) if name != column]
    delimiter = "\t" if "\t" in header else ","
    lines = [delimiter.join(line.split(delimiter)[k] for k in keep) for line in (header, good)]
    with pytest.raises(BadInput, match=rf"annotations.csv: missing column\(s\) \['{column}'\]"):
        read(tmp_path, format_name, "\n".join(lines) + "\n")


def test_a_video_list_row_that_names_no_file_is_an_error_row(tmp_path):
    """Empty, blank or a folder ('.', '/'): an error row; a file that is not a video is a clip whose decoding
    fails (the manifest's error row), as a missing one is."""
    (tmp_path / "notes.mp4").write_text("not a video")
    segments, errors = read(tmp_path, "videolist", "file,note\nnotes.mp4,a\n,b\n  ,c\n.,d\n/,e\nsub/..,f\n")
    assert [(s.video, s.start, s.end) for s in segments] == [("notes.mp4", 0.0, 2.0)]
    assert [line for line, _ in errors] == [3, 4, 5, 6, 7]
    assert errors[0][1] == "missing field(s) ['file']" and all("names no video file" in r for _, r in errors[1:])


def egomcq_choice(**fields: object) -> dict[str, object]:
    return {"video_uid": "v1", "clip_start": 1.0, "clip_end": 2.0, "clip_text": "#C C cuts"} | fields


@pytest.mark.parametrize(
    ("choice", "reason"),
    [
        (egomcq_choice(clip_start=""), "missing field(s) ['clip_start']"),
        (egomcq_choice(video_uid=""), "missing field(s) ['video_uid']"),
        (egomcq_choice(clip_end="later"), "bad timestamp 'later'"),
        ({k: v for k, v in egomcq_choice().items() if k != "clip_end"}, "missing field(s) ['clip_end']"),
        ("v1 1.0 2.0", "expected an object"),
    ],
)
def test_a_bad_egomcq_choice_is_an_error_row_naming_question_and_choice(tmp_path, choice, reason):
    question = {"query": {"clip_text": "#C C cuts"}, "answer": 0, "types": 1}
    choices = {"0": egomcq_choice(), "1": choice}
    path = tmp_path / "egomcq.json"
    path.write_text(json.dumps({"7": question | {"choices": choices}}))
    segments, errors = read_segments("egomcq", Source(str(path)))
    assert [s.clip_id for s in segments] == ["7_0"]
    assert len(errors) == 1 and str(errors[0]).startswith(f"{path}:0: question 7 choice 1: {reason}")


@pytest.mark.parametrize(("text", "reason"), [("[1, 2]", "expected an object of questions"), ("{", "not valid JSON")])
def test_an_egomcq_file_that_is_not_an_object_of_questions_stops_with_one_line(tmp_path, text, reason):
    path = tmp_path / "egomcq.json"
    path.write_text(text)
    with pytest.raises(BadInput, match=reason):
        read_segments("egomcq", Source(str(path)))
