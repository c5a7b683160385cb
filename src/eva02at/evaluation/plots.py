"""Result figures as PNG files: training curves, metric bars, a retrieval grid and the search contact sheet.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``, no pyplot), so no
global backend or figure state is touched and nothing needs a display. Every size is a whole number of
quarter inches at ``DPI`` and figures are saved without a tight bounding box: a figure's pixel size follows
from its layout alone, and each function returns it.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eva02at.core.atomic import atomic_path
from eva02at.core.errors import BadInput
from eva02at.data.jpeg import decode_jpegs
from eva02at.data.shards import FrameShards

DPI = 100
MARK_COLORS = {"relevant": "#1a9850", "partial": "#fdae61"}  # EK100 R == 1, 0 < R < 1
ROW_COLORS = {"zero_shot": "#4575b4", "finetuned": "#d73027", "random": "#999999"}
_LABEL_IN, _TITLE_IN = 2.0, 0.5  # tile grids: row label column and title band, inches
GRID_CELL = (3.0, 1.25)  # retrieval grid tile (4-frame strip and caption), inches
SHEET_CELL = (10.0, 1.75)  # contact sheet tile (8-frame strip and caption), inches


@dataclass(frozen=True)
class Tile:
    """One clip in a grid: a frame strip, a caption under it, and an optional relevance mark."""

    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    mark: str | None = None  # a key of MARK_COLORS, or None


def _save(fig: Figure, path: str | os.PathLike) -> tuple[int, int]:
    """Write ``fig`` as a PNG atomically; return its (width, height) in pixels."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    width, height = fig.get_size_inches() * DPI
    return int(width), int(height)


def training_curves(histories: dict[str, pd.DataFrame], path: str | os.PathLike) -> tuple[int, int]:
    """Loss and learning rate against the optimizer step, one line per training stage (history.csv)."""
    fig = Figure(figsize=(12, 4.5))
    loss_ax, lr_ax = fig.subplots(1, 2)
    for name, history in histories.items():
        missing = [c for c in ("step", "loss", "lr") if c not in history.columns]
        if missing:
            raise BadInput(f"training history of {name}: missing column(s) {missing}")
        loss_ax.plot(history["step"], history["loss"], label=name)
        lr_ax.plot(history["step"], history["lr"], label=name)
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    lr_ax.set(title="learning rate", xlabel="step", ylabel="lr", yscale="log" if histories else "linear")
    for ax in (loss_ax, lr_ax):
        ax.grid(alpha=0.3)
        if histories:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no training history", ha="center", va="center", transform=ax.transAxes)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.25)
    return _save(fig, path)


def metric_bars(results: dict[str, dict[str, dict[str, float]]], path: str | os.PathLike) -> tuple[int, int]:
    """Each benchmark's metrics (per direction for EK100) as grouped bars, one bar per row of ``results``.

    ``results[row][benchmark][metric]`` are fractions (rows: zero_shot, finetuned, random); bars show percent.
    """
    rows = list(results)
    if not rows:
        raise ValueError("no results to plot")
    benchmarks = list(results[rows[0]])
    keys = {name: list(results[rows[0]][name]) for name in benchmarks}
    fig = Figure(figsize=(14, 4.5))
    axes = fig.subplots(
        1, len(benchmarks), squeeze=False, gridspec_kw={"width_ratios": [len(keys[b]) + 1 for b in benchmarks]}
    )
    width = 0.8 / len(rows)
    for ax, name in zip(axes[0], benchmarks, strict=True):
        x = np.arange(len(keys[name]))
        for i, row in enumerate(rows):
            values = [100 * results[row][name][key] for key in keys[name]]
            bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=row, color=ROW_COLORS.get(row))
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(x, keys[name], rotation=30, ha="right")
        ax.set(title=name, ylabel="%", ylim=(0, 105))
        ax.grid(axis="y", alpha=0.3)
    axes[0, -1].legend(fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.22, top=0.9, wspace=0.3)
    return _save(fig, path)


def frame_strip(frames: np.ndarray, count: int = 4) -> np.ndarray:
    """``count`` evenly spaced frames of a clip ``(T, H, W, 3)`` side by side, ``(H, count * W, 3)``."""
    picked = frames[np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)]  # (count, H, W, 3)
    return np.concatenate(list(picked), axis=1)  # (H, count * W, 3)


def clip_strip(shards: FrameShards, clip_id: str, count: int = 4) -> np.ndarray:
    """The frame strip of one clip of a decoded collection."""
    return frame_strip(decode_jpegs(shards.jpegs(clip_id)), count)


def _tile_grid(
    title: str, rows: Sequence[tuple[str, Sequence[Tile]]], path: str | os.PathLike, cell: tuple[float, float]
) -> tuple[int, int]:
    """Rows of tiles, each row headed by a label on the left; tiles with a mark get a coloured frame.

    ``cell`` is the (width, height) of one tile with its caption, in inches (whole quarter inches).
    """
    columns = max((len(tiles) for _, tiles in rows), default=0)
    if not rows or not columns:
        raise ValueError(f"{path}: nothing to draw")
    width, height = _LABEL_IN + cell[0] * columns, _TITLE_IN + cell[1] * len(rows)
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (label, tiles) in enumerate(rows):
        axes[r, 0].set_ylabel(textwrap.fill(label, 24), rotation=0, ha="right", va="center", fontsize=9)
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(tiles):
                ax.set_axis_off()
                continue
            ax.imshow(tiles[c].image)
            ax.set_xlabel(tiles[c].caption, fontsize=7)
            color = MARK_COLORS.get(tiles[c].mark or "", "#cccccc")
            for spine in ax.spines.values():
                spine.set(color=color, linewidth=4 if tiles[c].mark else 1)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(
        left=_LABEL_IN / width, right=1 - 0.1 / width, top=1 - _TITLE_IN / height, bottom=0.35 / height, hspace=0.6
    )
    return _save(fig, path)


def retrieval_grid(examples: Sequence[tuple[str, Sequence[Tile]]], path: str | os.PathLike) -> tuple[int, int]:
    """Text-to-video results: one row per query text, its top clips left to right, relevant ones framed."""
    title = "text-to-video retrieval: green frame R = 1, orange 0 < R < 1"
    return _tile_grid(title, examples, path, GRID_CELL)


def contact_sheet(query: str, hits: Sequence[tuple[str, Tile]], path: str | os.PathLike) -> tuple[int, int]:
    """Search hits in rank order, one per row: (row label, e.g. rank and score; tile with the clip's strip)."""
    return _tile_grid(f"search: {query!r}", [(label, [tile]) for label, tile in hits], path, SHEET_CELL)


def paired_bars(
    labels: Sequence[str], published: Sequence[float], measured: Sequence[float | None], path: str | os.PathLike
) -> tuple[int, int]:
    """Published (grey) and measured (red) percentages side by side, one pair per label; None draws no bar."""
    fig = Figure(figsize=(max(6.0, round(2 * (0.5 * len(labels) + 2)) / 2), 5.0))
    ax = fig.subplots()
    x = np.arange(len(labels))
    ax.bar(x - 0.2, published, 0.4, label="published", color="#999999")
    ax.bar(x + 0.2, [np.nan if value is None else value for value in measured], 0.4, label="measured", color="#d73027")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=6)
    ax.set(ylabel="%", ylim=(0, 105), title="measured beside published")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.45, top=0.93)
    return _save(fig, path)
