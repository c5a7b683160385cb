"""A rehearsal of the whole pipeline at the real shapes (EVA02-B-16, 224 px, 4 and 16 frames) on this repository's
data, in an isolated copy of the project: ``python -m rehearsal`` (``make rehearsal``; README, Rehearsal)."""
