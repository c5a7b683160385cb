"""A synthetic Charades-Ego: first-person test and training videos with several labelled actions each.

Classes are the (verb, noun) pairs most frequent among the drawable EPIC-KITCHENS test rows, named
in words (``"take plate"``), so video-to-class-name retrieval measures the same skill zero-shot.
"""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass

import numpy as np

from eva02at.core.config import ConfigError
from eva02at.data.synthetic.captions import Caption, ClassSubset, class_name, present_tense
from eva02at.data.synthetic.config import SampleParams
from eva02at.data.synthetic.layout import Shot, VideoJob, plan_spans

ROOT = "charades-ego"
COLUMNS = (
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
)
ID_LETTERS = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class ActionClass:
    """One Charades-Ego class: an EPIC-KITCHENS verb class acting on a noun class."""

    verb_class: int
    noun_class: int
    verb: str  # in words, e.g. "turn on"
    noun: str

    @property
    def name(self) -> str:
        return f"{self.verb} {self.noun}"


def action_classes(captions: list[Caption], subset: ClassSubset, count: int) -> list[ActionClass]:
    """The ``count`` most frequent (verb class, main noun class) pairs of ``captions``."""
    pairs = Counter((c.verb_class, c.noun_classes[0]) for c in captions)
    if len(pairs) < count:
        raise ConfigError(f"sample.charades_classes: only {len(pairs)} verb-noun pairs exist, {count} requested")
    top = sorted(pairs, key=lambda p: (-pairs[p], p))[:count]
    return [ActionClass(v, n, class_name(subset.verbs[v]), class_name(subset.nouns[n])) for v, n in top]


def plan_charades(
    rng: np.random.Generator, classes: list[ActionClass], cfg: SampleParams, count: int, used: set[str]
) -> tuple[list[VideoJob], list[dict]]:
    """``count`` videos of a few distinct actions each, one after another, and their annotation rows.

    ``used`` holds the ids of the other split's videos (ids stay unique across the splits) and receives these."""
    jobs, rows = [], []
    for _ in range(count):
        video_id = _new_id(rng, used)
        count = int(rng.integers(cfg.charades_actions[0], cfg.charades_actions[1] + 1))
        picks = sorted(int(i) for i in rng.choice(len(classes), size=count, replace=False))
        spans, frames = plan_spans(rng, count, cfg.fps, cfg.segment_seconds, cfg.gap_seconds)
        order = rng.permutation(count)  # the classes play in random order
        acts = [(picks[i], spans[k]) for k, i in enumerate(order)]
        shots = tuple(Shot(a, b, classes[c].verb_class, (classes[c].noun_class,)) for c, (a, b) in acts)
        jobs.append(VideoJob(f"{ROOT}/videos/{video_id}.mp4", video_id, frames, shots))
        names = [classes[c].name for c, _ in acts]
        rows.append(
            {
                "id": video_id,
                "subject": "".join(rng.choice(list(ID_LETTERS), size=4)),
                "scene": "Kitchen",
                "quality": int(rng.integers(5, 8)),
                "relevance": int(rng.integers(5, 8)),
                "verified": "Yes",
                "script": "A person " + ", then ".join(present_tense(name) for name in names) + ".",
                "objects": ";".join(sorted({classes[c].noun for c, _ in acts})),
                "descriptions": "The person " + " and ".join(present_tense(name) for name in names) + ".",
                "actions": ";".join(f"c{c:03d} {a / cfg.fps:.2f} {b / cfg.fps:.2f}" for c, (a, b) in acts),
                "length": f"{frames / cfg.fps:.2f}",
            }
        )
    return jobs, rows


def class_lines(classes: list[ActionClass]) -> str:
    """``Charades_v1_classes.txt``: one ``cNNN name`` line per class."""
    return "".join(f"c{i:03d} {action.name}\n" for i, action in enumerate(classes))


def _new_id(rng: np.random.Generator, used: set[str]) -> str:
    """A fresh Charades-Ego style id: five letters or digits and ``EGO`` (first-person recording)."""
    while True:
        video_id = "".join(rng.choice(list(ID_LETTERS), size=5)) + "EGO"
        if video_id not in used:
            used.add(video_id)
            return video_id
