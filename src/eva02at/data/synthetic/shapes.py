"""Object appearances and anti-aliased drawing with numpy.

Every noun class gets one appearance (a shape and a colour), so a single frame tells the nouns
apart. Each shape carries a dark marker stripe from its centre outwards: without it a disk could
not show that it turns.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from eva02at.data.synthetic.exact import distance, sin_cos_turns

SHAPES = ("disk", "square", "triangle", "ring", "cross", "hexagon", "bar", "diamond")
MAX_APPEARANCES = 24  # beyond this, neighbouring hues come too close to tell apart after video coding


@dataclass(frozen=True)
class Appearance:
    """How one noun class looks: a shape name and an RGB colour in [0, 1]."""

    shape: str
    rgb: tuple[float, float, float]


def appearances(count: int) -> list[Appearance]:
    """``count`` appearances that differ in hue, brightness and (for neighbours) shape."""
    if not 1 <= count <= MAX_APPEARANCES:
        raise ValueError(f"need 1..{MAX_APPEARANCES} noun appearances, got {count}")
    looks = []
    for i in range(count):
        value = 0.95 if i % 2 == 0 else 0.7
        rgb = colorsys.hsv_to_rgb(i / count, 0.85, value)
        looks.append(Appearance(SHAPES[i % len(SHAPES)], (rgb[0], rgb[1], rgb[2])))
    return looks


def signed_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance to the outline of ``shape`` (negative inside), in units of the object radius.

    ``u`` and ``v`` are object-local coordinates (already rotated and divided by the radius).
    The formulas are exact for disk, ring and square-like shapes and close enough elsewhere for a
    one-pixel anti-aliased edge.
    """
    au, av = np.abs(u), np.abs(v)
    if shape == "disk":
        return distance(u, v) - 1.0
    if shape == "square":
        return np.maximum(au, av) - 0.8
    if shape == "triangle":  # pointing along -v (up when not rotated)
        return np.maximum(au * 0.866 + v * 0.5, -v) - 0.55
    if shape == "ring":
        return np.abs(distance(u, v) - 0.7) - 0.3
    if shape == "cross":
        return np.minimum(np.maximum(au - 0.35, av - 1.0), np.maximum(au - 1.0, av - 0.35))
    if shape == "hexagon":
        return np.maximum(au * 0.866 + av * 0.5, av) - 0.85
    if shape == "bar":
        return np.maximum(au - 1.0, av - 0.45)
    if shape == "diamond":
        return (au + av) * 0.7071 - 0.7
    raise ValueError(f"unknown shape {shape!r}; known shapes are {SHAPES}")


def paint_objects(
    frames: np.ndarray,
    look: Appearance,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    turns: np.ndarray,
) -> None:
    """Draw one object into every frame of ``frames`` (T, H, W, 3), in place.

    ``cx``, ``cy``, ``radius`` (pixels) and the rotation ``turns`` have shape (T,): one pose per frame.
    Only the box the object sweeps over is touched, to keep drawing cheap.
    """
    box = _box(frames.shape[1:3], cx - radius, cx + radius, cy - radius, cy + radius)
    if box is None:
        return
    y0, y1, x0, x1 = box
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5  # (h, w) pixel centres
    dx = xs[None] - cx[:, None, None]  # (T, h, w)
    dy = ys[None] - cy[:, None, None]
    sin, cos = sin_cos_turns(turns)
    sin, cos = sin[:, None, None], cos[:, None, None]  # (T, 1, 1)
    r = radius[:, None, None]
    u, v = (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r
    alpha = np.clip(0.5 - signed_distance(look.shape, u, v) * r, 0.0, 1.0)
    stripe = np.maximum(np.abs(v) * r - 0.9, (np.abs(u - 0.45) - 0.45) * r)
    dark = np.clip(0.5 - stripe, 0.0, 1.0)[..., None] * 0.65  # (T, h, w, 1)
    colour = np.asarray(look.rgb, np.float32) * (1.0 - dark)
    _blend(frames[:, y0:y1, x0:x1], alpha, colour)


def paint_arms(frames: np.ndarray, rgb: np.ndarray, start: np.ndarray, end: np.ndarray, width: float) -> None:
    """Draw a capsule (an arm reaching into view) from ``start`` to ``end`` (T, 2) xy, in place."""
    x_lo, x_hi = np.minimum(start[:, 0], end[:, 0]) - width, np.maximum(start[:, 0], end[:, 0]) + width
    y_lo, y_hi = np.minimum(start[:, 1], end[:, 1]) - width, np.maximum(start[:, 1], end[:, 1]) + width
    box = _box(frames.shape[1:3], x_lo, x_hi, y_lo, y_hi)
    if box is None:
        return
    y0, y1, x0, x1 = box
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    ax, ay = start[:, 0, None, None], start[:, 1, None, None]  # (T, 1, 1)
    bx, by = end[:, 0, None, None] - ax, end[:, 1, None, None] - ay
    px, py = xs[None] - ax, ys[None] - ay  # (T, h, w)
    t = np.clip((px * bx + py * by) / np.maximum(bx * bx + by * by, 1e-6), 0.0, 1.0)
    alpha = np.clip(0.5 - (distance(px - t * bx, py - t * by) - width), 0.0, 1.0)
    _blend(frames[:, y0:y1, x0:x1], alpha, rgb)


def _box(size: tuple[int, int], x_lo, x_hi, y_lo, y_hi) -> tuple[int, int, int, int] | None:
    """Integer pixel box (y0, y1, x0, x1) covering all frames' extents, clipped to the image."""
    height, width = size
    x0, x1 = max(int(np.floor(np.min(x_lo))) - 1, 0), min(int(np.ceil(np.max(x_hi))) + 1, width)
    y0, y1 = max(int(np.floor(np.min(y_lo))) - 1, 0), min(int(np.ceil(np.max(y_hi))) + 1, height)
    return (y0, y1, x0, x1) if x1 > x0 and y1 > y0 else None


def _blend(region: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-composite ``colour`` over ``region`` (T, h, w, 3) in place."""
    a = alpha[..., None].astype(np.float32)  # (T, h, w, 1)
    region *= 1.0 - a
    region += a * colour
