"""Verb motions whose single frames carry no trace of the verb.

An object's pose is a point ``u`` of the unit box [0, 1]^4 (x, y, scale, angle) that moves with a
constant velocity ``v`` from a uniformly random phase ``p``. Each coordinate either wraps around,
``u(t) = (p + v t) mod 1``, or bounces off the box, ``u(t) = tri(p + v t)`` with a triangle wave of
period 2. Shifting a uniform phase by ``v t`` leaves it uniform, so in every frame the pose is uniform
on the box whatever the verb: a single frame has the same pose distribution for every verb, and only
change across frames tells verbs apart.

Such a process has the same mean pose in every frame, so no verb can drift one way for ever: a
drifting object jumps back to the start of its path when it reaches the edge of the box (wrapping;
when a segment travels a quarter of the box, about a quarter of the segments show a jump).
Bouncing would make a direction and its opposite look alike, so it is used only for oscillations,
where the speed, not the direction, is the signature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eva02at.data.synthetic.exact import sin_turns

SLOW = 0.12  # box widths per second: about a quarter of the box over a two-second segment
FAST = 2.0  # oscillations: back and forth about once a second
TURN = 0.25  # turns per second

AXES = "xysa"  # x, y (down the image, towards the camera wearer), scale, angle


@dataclass(frozen=True)
class Motion:
    """A velocity (x, y, scale in box widths per second; angle in turns per second) and the
    coordinates that oscillate (bounce) instead of drifting (wrap)."""

    velocity: tuple[float, float, float, float]
    oscillate: str = ""  # letters of AXES


# One motion per EPIC-KITCHENS verb class key; the keys cover the most frequent verb classes of
# the retrieval test split.
MOTIONS: dict[str, Motion] = {
    "take": Motion((0.0, SLOW, SLOW, 0.0)),  # towards the camera: down and growing
    "put": Motion((0.0, -SLOW, -SLOW, 0.0)),  # away: up and shrinking
    "wash": Motion((FAST, 0.0, 0.0, 0.0), "x"),  # scrubbing left and right
    "open": Motion((0.0, 0.0, 2 * SLOW, 0.0)),  # growing in place
    "insert": Motion((2 * SLOW, 0.0, 0.0, 0.0)),  # sliding right
    "close": Motion((0.0, 0.0, -2 * SLOW, 0.0)),  # shrinking in place
    "turn-on": Motion((0.0, 0.0, 0.0, TURN)),  # turning clockwise
    "cut": Motion((0.0, FAST, 0.0, 0.0), "y"),  # chopping up and down
    "mix": Motion((FAST, FAST, 0.0, 0.0), "xy"),  # zigzag in both directions
    "pour": Motion((SLOW, SLOW, 0.0, TURN)),  # tipping over while moving down-right
    "remove": Motion((-2 * SLOW, 0.0, 0.0, 0.0)),  # sliding left
    "turn-off": Motion((0.0, 0.0, 0.0, -TURN)),  # turning anticlockwise
    "move": Motion((1.4 * SLOW, -1.4 * SLOW, 0.0, 0.0)),  # drifting up-right
    "throw": Motion((-1.4 * SLOW, -1.4 * SLOW, 0.0, 2 * TURN)),  # flying up-left, spinning
    "dry": Motion((0.0, 0.0, FAST, 0.0), "s"),  # pulsing in size
    "shake": Motion((FAST, 0.0, 0.0, 2 * TURN), "x"),  # sideways while spinning
}


def motion_of(verb_key: str) -> Motion:
    """The motion of an EPIC-KITCHENS verb class, by its key."""
    if verb_key not in MOTIONS:
        raise ValueError(f"no motion is defined for verb class {verb_key!r}; defined: {sorted(MOTIONS)}")
    return MOTIONS[verb_key]


def pose_track(rng: np.random.Generator, motion: Motion, frames: int, fps: float) -> np.ndarray:
    """Poses (frames, 4) in the unit box, uniform in every frame (see the module docstring)."""
    bounce = np.array([axis in motion.oscillate for axis in AXES])
    phase = rng.uniform(0.0, 1.0, size=4) * np.where(bounce, 2.0, 1.0)  # one full period
    seconds = np.arange(frames)[:, None] / fps  # (frames, 1)
    position = phase + np.asarray(motion.velocity) * seconds  # (frames, 4)
    return np.where(bounce, 1.0 - np.abs(np.mod(position, 2.0) - 1.0), np.mod(position, 1.0))


def camera_shake(rng: np.random.Generator, frames: int, fps: float, amplitude: int) -> np.ndarray:
    """Integer (dx, dy) offsets (frames, 2), a smooth wobble of at most ``amplitude`` pixels."""
    seconds = np.arange(frames)[:, None, None] / fps  # (frames, 1, 1)
    freq = rng.uniform(0.4, 2.5, size=(1, 2, 2))  # two sine components for each of x and y
    phase = rng.uniform(0.0, 1.0, size=(1, 2, 2))  # in turns
    waves = sin_turns(freq * seconds + phase)  # (frames, 2, 2)
    wobble = (waves[..., 0] + waves[..., 1]) / 2  # (frames, 2) in [-1, 1]
    return np.clip(np.rint(wobble * amplitude), -amplitude, amplitude).astype(int)
