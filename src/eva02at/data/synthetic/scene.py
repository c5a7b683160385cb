"""Drawing planned videos: a textured counter, the captioned objects, a hand and camera shake.

The primary noun moves with its verb's motion (see ``motion``), further nouns of the caption stand
still, and an arm reaches from the bottom edge to the moving object. Backgrounds depend only on
the look key (a participant), never on the caption, and the whole picture shakes together, as a
head-mounted camera does.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator

import numpy as np

from eva02at.data.synthetic.exact import sin_cos_turns, sin_turns
from eva02at.data.synthetic.layout import Shot, VideoJob, keyed_rng
from eva02at.data.synthetic.motion import camera_shake, motion_of, pose_track
from eva02at.data.synthetic.shapes import appearances, paint_arms, paint_objects

SHAKE = 2  # pixels of camera wobble; the canvas has this margin on every side
RADIUS = (0.08, 0.16)  # object radius range, as a fraction of the frame height
NOISE = 0.026  # sensor noise, uniform in +-NOISE (standard deviation 0.015)


class Renderer:
    """Turns :class:`VideoJob` plans into RGB frames for one class subset and frame size."""

    def __init__(self, verbs: dict[int, str], nouns: list[int], size: tuple[int, int], fps: float, seed: int):
        """``verbs`` maps verb class ids to their keys; ``nouns`` lists the drawable noun class ids."""
        self.motions = {cls: motion_of(key) for cls, key in verbs.items()}
        self.looks = dict(zip(nouns, appearances(len(nouns)), strict=True))
        self.width, self.height = size
        self.fps, self.seed = fps, seed

    def frames(self, job: VideoJob) -> Iterator[np.ndarray]:
        """The job's frames, (H, W, 3) uint8 each, in order."""
        rng = keyed_rng(self.seed, "video", job.path)
        background = self._background(job.look)
        idle = _to_uint8(background)  # (Hc, Wc, 3): the empty counter between actions
        shake = camera_shake(rng, job.frames, self.fps, SHAKE)
        cursor = 0
        for shot in job.shots:
            yield from (self._view(idle, offset) for offset in shake[cursor : shot.start])
            action = self._action(background, shot, job.look, rng)
            yield from map(self._view, action, shake[shot.start : shot.stop])
            cursor = shot.stop
        yield from (self._view(idle, offset) for offset in shake[cursor:])

    def _action(self, background: np.ndarray, shot: Shot, look: str, rng: np.random.Generator) -> np.ndarray:
        """Canvas frames (T, H + 2m, W + 2m, 3) uint8 of one shot."""
        for noun in shot.noun_classes:
            if noun not in self.looks:
                raise ValueError(f"noun class {noun} is not in the drawable subset {sorted(self.looks)}")
        if shot.verb_class not in self.motions:
            raise ValueError(f"verb class {shot.verb_class} is not in the subset {sorted(self.motions)}")
        still = background[None].copy()  # (1, Hc, Wc, 3)
        for noun in shot.noun_classes[1:]:
            cx, cy, radius, turns = self._place(rng.uniform(size=(1, 4)))
            paint_objects(still, self.looks[noun], cx, cy, radius, turns)
        count = shot.stop - shot.start
        canvas = np.repeat(_to_uint8(still), count, axis=0)  # (T, Hc, Wc, 3)
        cx, cy, radius, turns = self._place(pose_track(rng, self.motions[shot.verb_class], count, self.fps))
        arm = 0.05 * self.height
        shoulder_x = cx + 0.3 * self.height
        # Only the box swept by the object and the arm changes from frame to frame: draw in float there.
        x0 = max(int(np.min(cx - radius)) - 1, 0)
        x1 = min(int(np.max(np.maximum(cx + radius, shoulder_x + arm))) + 2, canvas.shape[2])
        y0 = max(int(np.min(cy - radius)) - 1, 0)
        region = canvas[:, y0:, x0:x1].astype(np.float32) / 255.0  # (T, h, w, 3)
        # (T, 2) region xy of the hand (just under the object) and of the shoulder (below the frame)
        reach = np.stack([cx + 0.5 * radius - x0, cy + 0.6 * radius - y0], axis=1)
        shoulder = np.stack([shoulder_x - x0, np.full_like(cy, region.shape[1] + arm)], axis=1)
        skin = _colour(keyed_rng(self.seed, "skin", look), (0.02, 0.1), (0.25, 0.55), (0.45, 0.9))
        paint_arms(region, skin, shoulder, reach, arm)
        paint_arms(region, skin, reach, reach, 1.6 * arm)  # the palm: a capsule of length zero
        paint_objects(region, self.looks[shot.noun_classes[0]], cx - x0, cy - y0, radius, turns)
        canvas[:, y0:, x0:x1] = _to_uint8(region)
        return canvas

    def _place(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Canvas centre x, y, radius and rotation in turns (each (T,)) from unit-box poses (T, 4).

        Objects stay inside the central square of the frame (even when shaken), so that a centre crop
        keeps them whole.
        """
        lo, hi = RADIUS[0] * self.height, RADIUS[1] * self.height
        inner = self.height - 2 * (hi + SHAKE)  # room for the centre inside the square
        left = SHAKE + (self.width - self.height) / 2 + hi + SHAKE  # canvas x of the leftmost centre
        top = SHAKE + hi + SHAKE
        cx = left + pose[:, 0] * inner
        cy = top + pose[:, 1] * inner
        radius = lo + pose[:, 2] * (hi - lo)
        return cx, cy, radius, pose[:, 3]

    def _background(self, look: str) -> np.ndarray:
        """A counter texture below a plain wall, fixed by the look key: (H + 2m, W + 2m, 3) float64."""
        rng = keyed_rng(self.seed, "look", look)
        height, width = self.height + 2 * SHAKE, self.width + 2 * SHAKE
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        kind = int(rng.integers(3))
        if kind == 0:  # stripes (wooden boards, tiles in a row)
            turns, period = rng.uniform(0, 0.5), rng.uniform(5, 14)  # direction, in turns
            sin, cos = sin_cos_turns(turns)
            pattern = 0.5 + 0.5 * sin_turns((xs * cos + ys * sin) / period)
        elif kind == 1:  # checks (tiles)
            tile = int(rng.integers(6, 14))
            pattern = (xs // tile + ys // tile) % 2
        else:  # blotches (stone)
            coarse = rng.uniform(size=(max(height // 8, 2), max(width // 8, 2)))
            pattern = _enlarge(coarse, height, width)
        contrast = rng.uniform(0.1, 0.3)
        surface = _colour(rng, (0, 1), (0.05, 0.35), (0.45, 0.8)) * (1 - contrast * pattern[..., None])
        horizon = int(rng.uniform(0.1, 0.3) * height)
        surface[:horizon] = _colour(rng, (0, 1), (0.0, 0.2), (0.3, 0.9))
        surface += rng.uniform(-NOISE, NOISE, size=surface.shape)
        return np.clip(surface, 0.0, 1.0)

    def _view(self, canvas: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """The camera's view (H, W, 3) of a canvas frame (Hc, Wc, 3), shifted by the shake ``offset``."""
        x, y = SHAKE + int(offset[0]), SHAKE + int(offset[1])
        return np.ascontiguousarray(canvas[y : y + self.height, x : x + self.width])


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] (every drawing step is a convex blend of such values) to rounded uint8."""
    canvas = canvas * 255.0
    canvas += 0.5
    return canvas.astype(np.uint8)


def _enlarge(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic enlargement (Keys, a = -0.5, pixel centres aligned) of a small grid to (height, width).

    Written out with exact arithmetic in a fixed order, so the blotches are the same bits everywhere.
    """
    row_index, row_weight = _cubic_taps(coarse.shape[0], height)
    col_index, col_weight = _cubic_taps(coarse.shape[1], width)
    rows = sum(w[:, None] * coarse[i] for i, w in zip(row_index, row_weight, strict=True))  # (height, w_in)
    return sum(w * rows[:, i] for i, w in zip(col_index, col_weight, strict=True))  # (height, width)


def _cubic_taps(size_in: int, size_out: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each output pixel, its four source pixels (clamped at the edges) and their Keys weights."""
    position = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5  # (size_out,) in source pixels
    base = np.floor(position)
    frac = position - base
    index = [np.clip(base.astype(np.int64) + k, 0, size_in - 1) for k in (-1, 0, 1, 2)]
    weight = [_keys(d) for d in (1.0 + frac, frac, 1.0 - frac, 2.0 - frac)]  # distances to the four taps
    return index, weight


def _keys(d: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5) at distances 0 <= d < 2."""
    return np.where(d <= 1.0, (1.5 * d - 2.5) * d * d + 1.0, ((-0.5 * d + 2.5) * d - 4.0) * d + 2.0)


def _colour(rng: np.random.Generator, hue: tuple, saturation: tuple, value: tuple) -> np.ndarray:
    """A random RGB colour (3,) float32 with hue, saturation and value drawn from the given ranges."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(*hue), rng.uniform(*saturation), rng.uniform(*value))
    return np.asarray(rgb, np.float32)
