"""Result figures: valid PNGs whose pixel size follows the documented layout, and relevance marks drawn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eva02at.evaluation.plots import (
    DPI,
    GRID_CELL,
    MARK_COLORS,
    SHEET_CELL,
    Tile,
    contact_sheet,
    frame_strip,
    metric_bars,
    retrieval_grid,
    training_curves,
)

LABEL_IN, TITLE_IN = 2.0, 0.5  # row label column and title band of the tile grids


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


def pixels_of(path, hex_color: str, tolerance: int = 12) -> int:
    """How many pixels of the PNG are within ``tolerance`` of a colour."""
    target = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(rgb - target).max(axis=-1) <= tolerance).sum())


def tile(value: int, mark: str | None = None) -> Tile:
    return Tile(np.full((16, 64, 3), value, dtype=np.uint8), f"clip {value}", mark)


def test_training_curves(tmp_path):
    history = pd.DataFrame({"step": [5, 10, 15], "loss": [3.0, 2.5, 2.0], "lr": [1e-4, 2e-4, 1e-4]})
    size = training_curves({"pretrain": history, "finetune": history.assign(loss=[1.0, 0.8, 0.7])}, tmp_path / "c.png")
    assert size == png_size(tmp_path / "c.png") == (12 * DPI, 4.5 * DPI)
    assert training_curves({}, tmp_path / "empty.png") == png_size(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="pretrain: missing column"):
        training_curves({"pretrain": history.drop(columns="lr")}, tmp_path / "bad.png")


def test_metric_bars(tmp_path):
    row = {"ek100_mir": {"mAP_v2t": 0.3, "mAP_t2v": 0.2}, "egomcq": {"inter_video": 0.9, "intra_video": 0.4}}
    results = {"zero_shot": row, "finetuned": row, "random": row}
    assert metric_bars(results, tmp_path / "bars.png") == png_size(tmp_path / "bars.png") == (14 * DPI, 4.5 * DPI)


@pytest.mark.parametrize("queries", [1, 3])
def test_retrieval_grid_size_follows_its_rows(tmp_path, queries):
    rows = [(f"query {q}", [tile(40 * c) for c in range(5)]) for q in range(queries)]
    expected = ((LABEL_IN + 5 * GRID_CELL[0]) * DPI, (TITLE_IN + queries * GRID_CELL[1]) * DPI)
    assert retrieval_grid(rows, tmp_path / "grid.png") == png_size(tmp_path / "grid.png") == expected


def test_relevant_tiles_are_framed(tmp_path):
    plain = [("q", [tile(50), tile(100)])]
    marked = [("q", [tile(50, "relevant"), tile(100, "partial")])]
    retrieval_grid(plain, tmp_path / "plain.png")
    retrieval_grid(marked, tmp_path / "marked.png")
    for color in MARK_COLORS.values():
        assert pixels_of(tmp_path / "plain.png", color) == 0
        assert pixels_of(tmp_path / "marked.png", color) > 200  # a frame around a 3-inch tile


def test_contact_sheet_has_one_row_per_hit(tmp_path):
    hits = [(f"#{rank}", tile(30 * rank)) for rank in range(1, 4)]
    expected = ((LABEL_IN + SHEET_CELL[0]) * DPI, (TITLE_IN + 3 * SHEET_CELL[1]) * DPI)
    assert contact_sheet("open the door", hits, tmp_path / "sheet.png") == png_size(tmp_path / "sheet.png") == expected
    with pytest.raises(ValueError, match="nothing to draw"):
        contact_sheet("nothing", [], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_frame_strip_picks_evenly_spaced_frames():
    frames = np.arange(8)[:, None, None, None] * np.ones((8, 2, 3, 3), dtype=np.uint8)  # frame t is all t
    strip = frame_strip(frames, 4)
    assert strip.shape == (2, 12, 3)
    assert strip[0, ::3, 0].tolist() == [0, 2, 5, 7]
    assert frame_strip(frames[:2], 4).shape == (2, 6, 3)  # fewer frames than asked: all of them
