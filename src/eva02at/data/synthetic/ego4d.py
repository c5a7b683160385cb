"""Synthetic Ego4D collections: an EgoClip pretraining table and held-out EgoMCQ questions.

Captions are EPIC-KITCHENS train sentences rewritten in Ego4D's third-person style
(``"#C C opens drawer"``); tags are EPIC-KITCHENS class ids. Every Ego4D video has its own look
(as every Ego4D video has its own wearer and place), and EgoMCQ videos never appear in EgoClip.
"""

from __future__ import annotations

import uuid

import numpy as np

from eva02at.core.config import ConfigError
from eva02at.data.synthetic.captions import Caption, third_person
from eva02at.data.synthetic.config import SampleParams
from eva02at.data.synthetic.layout import Shot, VideoJob, chunk_sizes, plan_spans

ROOT = "ego4d"
EGOCLIP_COLUMNS = (
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
)
EGOCLIP_PLUS = {  # LaViLa's EgoClip+ pickles: file name and captions per clip
    "rephraser": ("ego4d_train.rephraser.no_punkt_top3.pkl", 3),
    "narrator": ("ego4d_train.narrator_63690737.return_10.pkl", 10),
}
CHOICES = 5
INTER, INTRA = 1, 2  # EgoVLP's question types: choices from five videos, or from one


def plan_egoclip(
    rng: np.random.Generator, captions: list[Caption], cfg: SampleParams
) -> tuple[list[VideoJob], list[dict]]:
    """Pretraining videos and their EgoClip rows (times in seconds)."""
    picks = rng.choice(len(captions), size=cfg.egoclip_clips, replace=True)
    jobs, rows, start = [], [], 0
    for size in chunk_sizes(rng, cfg.egoclip_clips, cfg.segments_per_video):
        chosen = [captions[i] for i in picks[start : start + size]]
        start += size
        job, clips = _video(rng, chosen, cfg)
        jobs.append(job)
        for index, (clip, caption) in enumerate(zip(clips, chosen, strict=True)):
            rows.append(
                {
                    "video_uid": clip["video_uid"],
                    "video_dur": round(job.frames / cfg.fps, 3),
                    "narration_source": "narration_pass_1",
                    "narration_ind": index,
                    "narration_time": round((clip["clip_start"] + clip["clip_end"]) / 2, 3),
                    **clip,
                    "tag_verb": str([caption.verb_class]),
                    "tag_noun": str(list(caption.noun_classes)),
                }
            )
    return jobs, rows


def plan_egoclip_plus(
    rng: np.random.Generator, rows: list[dict], captions: list[Caption]
) -> dict[str, list[tuple[str, float, float, list[str]]]]:
    """EgoClip+ caption sets of the EgoClip ``rows`` in LaViLa's published structure: per set, one row
    ``(video_uid, start, end, [caption, ...])`` per clip. The captions stand in for the generated ones by
    narrations of the same verb and noun classes (the rephraser's without "#C", as its files have them)."""
    same_classes: dict[tuple[str, str], list[str]] = {}
    for caption in captions:
        key = (str([caption.verb_class]), str(list(caption.noun_classes)))
        same_classes.setdefault(key, []).append(third_person(caption.narration))
    choices = {key: sorted(set(texts)) for key, texts in same_classes.items()}
    sets = {}
    for name, (_, count) in EGOCLIP_PLUS.items():
        sets[name] = []
        for row in rows:
            texts = choices[(row["tag_verb"], row["tag_noun"])]
            drawn = [texts[i] for i in rng.integers(len(texts), size=count)]
            if name == "rephraser":
                drawn = [text.removeprefix("#C ") for text in drawn]
            sets[name].append((row["video_uid"], row["clip_start"], row["clip_end"], drawn))
    return sets


def plan_egomcq(
    rng: np.random.Generator, captions: list[Caption], cfg: SampleParams
) -> tuple[list[VideoJob], dict[str, dict]]:
    """Held-out videos and EgoMCQ questions: a text query and five clips, alternating inter and intra."""
    by_text = {third_person(c.narration): c for c in captions}  # distinct clip texts, not just narrations
    texts = sorted(by_text)
    if len(texts) < CHOICES:
        raise ConfigError(f"EgoMCQ needs >= {CHOICES} distinct narrations, the class subset has {len(texts)}")
    jobs, videos = [], []
    for _ in range(cfg.egomcq_videos):
        count = int(rng.integers(max(CHOICES, cfg.segments_per_video[0]), cfg.segments_per_video[1] + 1))
        chosen = [by_text[texts[i]] for i in rng.choice(len(texts), size=min(count, len(texts)), replace=False)]
        job, clips = _video(rng, chosen, cfg)
        jobs.append(job)
        videos.append(clips)
    questions = {}
    for number in range(cfg.egomcq_questions):
        kind = INTER if number % 2 == 0 else INTRA
        choices = _inter_choices(rng, videos) if kind == INTER else _intra_choices(rng, videos)
        answer = int(rng.integers(CHOICES))
        choices[0], choices[answer] = choices[answer], choices[0]
        questions[str(number)] = {
            "query": dict(choices[answer]),
            "choices": {str(i): clip for i, clip in enumerate(choices)},
            "answer": answer,
            "types": kind,
        }
    return jobs, questions


def _inter_choices(rng: np.random.Generator, videos: list[list[dict]]) -> list[dict]:
    """The true clip first, then one clip with another text from each of four other videos."""
    order = rng.permutation(len(videos))
    truth = videos[order[0]][int(rng.integers(len(videos[order[0]])))]
    choices = [truth]
    for v in order[1:]:
        others = [c for c in videos[v] if c["clip_text"] != truth["clip_text"]]
        choices.append(others[int(rng.integers(len(others)))])
        if len(choices) == CHOICES:
            return choices
    raise ConfigError("EgoMCQ: too few videos for an inter-video question")


def _intra_choices(rng: np.random.Generator, videos: list[list[dict]]) -> list[dict]:
    """Five clips with distinct texts from one video (the true clip first)."""
    clips = videos[int(rng.integers(len(videos)))]
    return [clips[i] for i in rng.choice(len(clips), size=CHOICES, replace=False)]


def _video(rng: np.random.Generator, captions: list[Caption], cfg: SampleParams) -> tuple[VideoJob, list[dict]]:
    """One Ego4D video showing ``captions`` in order, and its clips (uid, start, end, text)."""
    uid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    spans, frames = plan_spans(rng, len(captions), cfg.fps, cfg.clip_seconds, cfg.gap_seconds)
    shots = tuple(Shot(a, b, c.verb_class, c.noun_classes) for (a, b), c in zip(spans, captions, strict=True))
    clips = [
        {
            "video_uid": uid,
            "clip_start": round(a / cfg.fps, 3),
            "clip_end": round(b / cfg.fps, 3),
            "clip_text": third_person(c.narration),
        }
        for (a, b), c in zip(spans, captions, strict=True)
    ]
    return VideoJob(f"{ROOT}/videos/{uid}.mp4", uid, frames, shots), clips
