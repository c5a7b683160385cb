"""Machine-independent arithmetic for every value that decides a pixel of the synthetic sample.

numpy chooses SIMD kernels for sin, cos, exp and the like when it starts, by CPU (``numpy.show_runtime()``),
and libm has CPU-specific variants as well; their results may differ in the last bit from one machine to
another. Drawing turns such bits into pixels (rounding to uint8, integer camera offsets, pixel boxes), and
the video encoder spreads one changed pixel over the rest of the video. What this module adds: sine and
cosine (a Taylor polynomial after an exact reduction to the nearest quarter turn) and Euclidean distance
built from +, -, *, / and sqrt only, which IEEE 754 rounds correctly, so that any CPU, SIMD width, memory
alignment or process count gives the same bits.
"""

from __future__ import annotations

import math

import numpy as np

_TERMS = 9  # Taylor terms on [-pi/4, pi/4]: the first one left out is below 1e-17


def sin_cos_turns(turns: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """``sin(2 pi turns)`` and ``cos(2 pi turns)`` elementwise, as float64 arrays within 1e-15 of the truth."""
    turns = np.asarray(turns, dtype=np.float64)
    quarter = np.rint(turns * 4.0)  # the nearest quarter turn; both steps are exact
    x = (turns - quarter * 0.25) * (2.0 * math.pi)  # the rest, in [-pi/4, pi/4] radians
    x2 = x * x
    sin, cos = np.ones_like(x), np.ones_like(x)
    for k in range(_TERMS, 0, -1):  # Horner: sin x = x (1 - x^2/(2*3) (1 - x^2/(4*5) (...)))
        sin = 1.0 - x2 / (2 * k * (2 * k + 1)) * sin
        cos = 1.0 - x2 / ((2 * k - 1) * 2 * k) * cos
    sin = x * sin
    quadrant = quarter.astype(np.int64) % 4  # sin(x + q pi/2) cycles through sin, cos, -sin, -cos
    return np.choose(quadrant, [sin, cos, -sin, -cos]), np.choose(quadrant, [cos, -sin, -cos, sin])


def sin_turns(turns: np.ndarray | float) -> np.ndarray:
    """``sin(2 pi turns)`` elementwise (see :func:`sin_cos_turns`)."""
    return sin_cos_turns(turns)[0]


def distance(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``sqrt(dx^2 + dy^2)`` with correctly rounded operations (``np.hypot`` calls the platform's libm)."""
    return np.sqrt(dx * dx + dy * dy)
