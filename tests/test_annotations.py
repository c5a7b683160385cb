"""Annotation formats: one registry in the library, EgoMCQ parsed once for clips and questions, clamping."""

from __future__ import annotations

import csv
import json
import random

import pytest

from eva02at.core.errors import BadInput
from eva02at.data.annotations import CLAMP_NEGATIVE_START, Segment, Source, register_format
from eva02at.data.formats import egoclip, ek100
from eva02at.data.formats.egomcq import parse_egomcq, read_mcq_questions
from eva02at.data.formats.registered import FORMATS, read_segments


def egomcq_file(tmp_path):
    """Two questions in EgoVLP's layout; the second has 11 choices (numeric order puts "10" last)."""

    def clip(video, start, end, text=""):
        return {"video_uid": video, "clip_start": start, "clip_end": end, "clip_text": text}

    questions = {
        "7": {
            "query": clip("v1", 1.0, 2.0, "#C C opens the fridge"),
            "choices": {str(k): clip(f"v{k}", k, k + 1.0) for k in range(5)},
            "answer": 2,
            "types": 1,
        },
        "8": {
            "query": clip("v2", 0.0, 1.0, "#C C cuts onion"),
            "choices": {str(k): clip("v2", k - 0.5, k + 0.5) for k in range(11)},
            "answer": "10",
            "types": 2,
        },
    }
    path = tmp_path / "egomcq.json"
    path.write_text(json.dumps(questions))
    return path


def test_every_format_is_registered_where_it_is_defined():
    assert set(FORMATS) >= {"ek100", "egoclip", "egomcq", "charades", "videolist"}
    assert FORMATS["ek100"].read is ek100.read_ek100
    assert FORMATS["ek100"].layout == "{participant_id}/{video_id}.MP4"


def test_a_new_format_is_one_function_and_its_registration(tmp_path):
    @register_format("test_lines", layout="{name}.mp4")
    def read_lines(source: Source):
        names = (tmp_path / source.annotations).read_text().split()
        return [Segment(n, source.pattern.format(name=n), 0.0, 1.0, k + 1) for k, n in enumerate(names)], []

    try:
        (tmp_path / "list.txt").write_text("a b")
        segments, errors = read_segments("test_lines", Source("list.txt"))
        assert [s.video for s in segments] == ["a.mp4", "b.mp4"] and errors == []
        with pytest.raises(ValueError, match="registered twice"):
            register_format("test_lines", layout="x")(read_lines)
    finally:
        del FORMATS["test_lines"]
    with pytest.raises(ValueError, match="unknown annotation format 'nope'"):
        read_segments("nope", Source("x.csv"))


def test_egomcq_is_parsed_once_into_clips_and_questions(tmp_path):
    path = egomcq_file(tmp_path)
    parsed = parse_egomcq(path)
    assert [q.qid for q in parsed.questions] == ["7", "8"]
    first, second = parsed.questions
    assert first.text == "#C C opens the fridge" and first.answer == 2 and first.kind == 1
    assert second.choices[-1] == "8_10" and second.answer == 10 and second.kind == 2
    assert [s.clip_id for s in parsed.segments] == [*first.choices, *second.choices]  # one clip per choice
    assert parsed.question_errors == parsed.clip_errors == []
    segments, errors = read_segments("egomcq", Source(str(path)))
    assert segments == parsed.segments and errors == []
    assert read_mcq_questions(path) == parsed.questions


def test_egomcq_negative_starts_are_clamped_and_bad_questions_reported(tmp_path):
    path = egomcq_file(tmp_path)
    parsed = parse_egomcq(path)
    starts = {s.clip_id: (s.start, s.clamped) for s in parsed.segments}
    assert starts["8_0"] == (0.0, (CLAMP_NEGATIVE_START,)) and starts["8_1"] == (0.5, ())
    questions = json.loads(path.read_text())
    questions["7"]["types"] = 3
    del questions["8"]["choices"]["4"]["clip_end"]
    path.write_text(json.dumps(questions))
    broken = parse_egomcq(path)
    assert [q.qid for q in broken.questions] == ["8"] and "types 3" in broken.question_errors[0].reason
    assert [e.reason.split(":")[0] for e in broken.clip_errors] == ["question 8 choice 4"]
    assert len(broken.segments) == 5 + 10  # question 7's clips still decode; the bad choice clip does not
    with pytest.raises(BadInput, match="question 7"):  # evaluation needs every question: one clear line
        read_mcq_questions(path)


def test_egoclip_negative_start_is_clamped_and_malformed_rows_are_errors(tmp_path):
    table = tmp_path / "egoclip.csv"
    table.write_text(
        "video_uid,clip_start,clip_end,clip_text\nv,-1.25,2.0,a\nv,-0.0,1.0,b\nv,-x,1.0,c\nv,-3.0,-1.0,d\nv,1.0,2.5,e\n"
    )
    segments, errors = read_segments("egoclip", Source(str(table)))
    assert [(s.clip_id, s.start, s.clamped) for s in segments] == [
        ("v_0", 0.0, (CLAMP_NEGATIVE_START,)),
        ("v_1", 0.0, ()),
        ("v_4", 1.0, ()),
    ]
    assert [(e.line, "bad timestamp" in e.reason) for e in errors] == [(4, True), (5, True)]


def _egoclip_fields(rng: random.Random) -> list[str]:
    """One EgoClip row's video, times and text, drawn to cover the usual rows and every kind of odd one."""
    plain = f"{rng.uniform(0, 2000):.{rng.randint(0, 17)}f}"
    odd = ["", "x", "-x", "-0.0", "-0", "1e1", " 1.5", "00:01:02.5", "1.", "inf", "nan", "-1.5", "+2", "0"]
    start = rng.choice([plain] * 6 + odd + [f"-{plain}"])
    end = rng.choice([f"{float(plain) + rng.uniform(0, 5):.{rng.randint(0, 17)}f}"] * 6 + odd)
    video = rng.choice(["v1", "v2", "", "vidé/o"])
    text = rng.choice(["#C C picks a cup", "", 'comma, and "quote"', "café\ttab"])
    return [video, start, end, text]


@pytest.mark.parametrize(
    ("dialect", "pattern"),
    [("excel-tab", None), ("excel", "{video_uid}/{clip_text}.mp4"), ("excel", "{video_uid!s}.mp4")],
)
def test_egoclip_columnar_reader_equals_the_row_by_row_reader(tmp_path, monkeypatch, dialect, pattern):
    """The Arrow batches give exactly the segments (ids, times, clamps) and row errors of the csv-module reader."""
    rng = random.Random(7)
    path = tmp_path / "egoclip.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, dialect=dialect)
        writer.writerow(["clip_idx", "video_uid", "clip_start", "clip_end", "clip_text"])
        writer.writerows([k, *_egoclip_fields(rng)] for k in range(3000))
    source = Source(str(path), pattern=pattern)
    read_batches, used = egoclip._egoclip_columnar, []
    monkeypatch.setattr(egoclip, "_egoclip_columnar", lambda *args: used.append(read_batches(*args)) or used[0])
    columnar = read_segments("egoclip", source)
    assert used[0] is not None  # read in Arrow batches, not by the fallback
    monkeypatch.setattr(egoclip, "_egoclip_columnar", lambda *_: None)
    by_row = read_segments("egoclip", source)
    assert columnar == by_row
    assert 300 < len(columnar[0]) < 3000 and columnar[1]  # both kinds of row were there


def test_egoclip_table_with_quoted_line_breaks_and_blank_lines_keeps_its_line_numbers(tmp_path):
    path = tmp_path / "egoclip.csv"
    path.write_text('video_uid,clip_start,clip_end,clip_text\nv,1,2,"two\nlines"\n\nv,3,4,after\nv,5,4,bad\n')
    segments, errors = read_segments("egoclip", Source(str(path)))
    assert [(s.clip_id, s.line, s.text) for s in segments] == [("v_1", 3, "two\nlines"), ("v_3", 5, "after")]
    assert [(e.line, e.reason) for e in errors] == [(6, "stop '4' is not after start '5'")]
