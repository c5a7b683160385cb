"""EgoMCQ (EgoVLP's ``egomcq.json``), parsed once: its choice clips for frames, its questions for evaluation."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eva02at.core.errors import BadInput
from eva02at.data.annotations import (
    RowError,
    Segment,
    Segments,
    Source,
    needed_columns,
    parse_span,
    register_format,
    video_path,
)

NAME = "egomcq"
MCQ_INTER_VIDEO, MCQ_INTRA_VIDEO = 1, 2  # EgoMCQ "types": choices from five videos, or from one video
CLIP_NEEDED = ("clip_start", "clip_end")  # beside the fields the video path pattern names


@dataclass(frozen=True)
class McqQuestion:
    """One EgoMCQ question: a query text and the clips of its choices, one of them the answer."""

    qid: str  # the file's key
    text: str  # query clip_text
    choices: tuple[str, ...]  # clip ids ``<question>_<choice>`` in choice order
    answer: int  # index into ``choices``
    kind: int  # MCQ_INTER_VIDEO or MCQ_INTRA_VIDEO (the file's "types")


@dataclass(frozen=True)
class EgoMcq:
    """An EgoMCQ file parsed once: its questions (for evaluation) and its choice clips (for frames)."""

    questions: list[McqQuestion]
    question_errors: list[RowError]  # questions without query text, choices, answer or types
    segments: list[Segment]
    clip_errors: list[RowError]  # choice clips without a video or a valid time span


def parse_egomcq(json_path: str | os.PathLike, pattern: str = "{video_uid}.mp4") -> EgoMcq:
    """EgoVLP's egomcq.json: clip id ``<question>_<choice>``, choices in numeric order."""
    path = str(json_path)
    parsed = EgoMcq([], [], [], [])
    for qid, question in _questions(path).items():
        choices = question.get("choices") if isinstance(question, dict) else None
        keys = sorted(choices, key=_choice_order) if isinstance(choices, dict) else []
        try:
            answer, kind = keys.index(str(question["answer"])), int(question["types"])
            text = question["query"]["clip_text"]
            if kind not in (MCQ_INTER_VIDEO, MCQ_INTRA_VIDEO):
                raise ValueError(f"types {kind} is neither {MCQ_INTER_VIDEO} nor {MCQ_INTRA_VIDEO}")
            parsed.questions.append(McqQuestion(qid, text, tuple(f"{qid}_{k}" for k in keys), answer, kind))
        except (KeyError, ValueError, TypeError) as err:
            reason = f"question {qid}: needs query.clip_text, choices, answer, types ({err!r})"
            parsed.question_errors.append(RowError(path, 0, reason))
        for key in keys:
            try:
                parsed.segments.append(_choice_clip(f"{qid}_{key}", choices[key], pattern))
            except ValueError as err:
                parsed.clip_errors.append(RowError(path, 0, f"question {qid} choice {key}: {err}"))
    return parsed


def _questions(path: str) -> dict[str, Any]:
    """The file's questions by key; a file that is not a JSON object of questions stops the read."""
    try:
        questions = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"{path}: not valid JSON ({err})") from None
    if not isinstance(questions, dict):
        raise BadInput(f"{path}: expected an object of questions by key, got a {type(questions).__name__}")
    return questions


def _choice_clip(clip_id: str, clip: object, pattern: str) -> Segment:
    """One choice's clip; a ValueError names the missing or malformed field."""
    if not isinstance(clip, dict):
        raise ValueError(f"expected an object with {list(CLIP_NEEDED)}, got {clip!r}")
    missing = [name for name in needed_columns(CLIP_NEEDED, pattern) if clip.get(name) in (None, "")]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    start, end, clamped = parse_span(clip["clip_start"], clip["clip_end"], clamp_negative_start=True)
    return Segment(clip_id, video_path(pattern, clip), start, end, 0, str(clip.get("clip_text") or ""), clamped)


def read_mcq_questions(json_path: str | os.PathLike) -> list[McqQuestion]:
    """The questions of an EgoMCQ file for evaluation, which needs every one: a malformed question is an error."""
    parsed = parse_egomcq(json_path)
    if parsed.question_errors:
        raise BadInput(str(parsed.question_errors[0]))
    return parsed.questions


@register_format(NAME, layout="{video_uid}.mp4")
def read_egomcq(source: Source) -> Segments:
    """The choice clips of an EgoMCQ file (the queries are text, read by the evaluation)."""
    parsed = parse_egomcq(source.annotations, source.pattern)
    return parsed.segments, parsed.clip_errors


def _choice_order(key: str) -> tuple[int, int | str]:
    """EgoMCQ choice keys ``"0"``..``"4"`` in numeric order (``"10"`` after ``"9"``); others after, by name."""
    return (0, int(key)) if str(key).isdigit() else (1, str(key))
