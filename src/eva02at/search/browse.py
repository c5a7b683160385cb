"""A local page for judging retrieval by eye: the library side of ``eva02at browse``.

Each *panel* is one model searching one gallery (a video export), with the rule of ``eva02at search``: a
checkpoint may search its own export or one made by a model of its compatibility chain
(``eva02at.search.query.check_checkpoint``); any other pairing is refused, and the panel shows the refusal instead of
hits. Two panels side by side compare a champion and a candidate, or fine-tuned and zero-shot. A query that is
one of a benchmark's sentences gets its hits coloured by ground-truth relevance, as in the retrieval grid.

FastAPI serves the JSON API and frame strips (JPEG, from the frames shards the export records); the page is one
static HTML file with plain JavaScript, so there is no build step. Models, exports and indexes load once.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from PIL import Image

from eva02at.core.errors import MissingInput
from eva02at.data.labels import RelevancyTable
from eva02at.data.shards import FrameShards
from eva02at.evaluation.benchmarks.ek100_mir import read_sentences
from eva02at.evaluation.plots import MARK_COLORS, clip_strip
from eva02at.export.inference import encode_texts
from eva02at.models import load_video_clip
from eva02at.search.index import IndexParams
from eva02at.search.query import (
    Hit,
    IncompatibleCheckpoint,
    SearchError,
    check_checkpoint,
    gallery_index,
    open_gallery,
    rank_clips,
)

STRIP_FRAMES = 4  # frames per hit shown side by side
DEFAULT_PANELS = [  # the sample's fine-tuned and zero-shot models, each on its own export of the EK100 test clips
    ("finetuned", "models/finetune/model.pt", "exports/finetuned/ek100_test_video.parquet"),
    ("zero_shot", "models/pretrain/model.pt", "exports/zero_shot/ek100_test_video.parquet"),
]


@dataclass(frozen=True)
class Panel:
    """What one column of the page searches: a name, the checkpoint encoding queries, and a video export."""

    name: str
    checkpoint: str
    gallery: str


class PanelSearch:
    """One panel loaded: its model, gallery and index, or the refusal that stands in for every answer."""

    def __init__(self, panel: Panel) -> None:
        self.panel = panel
        if not Path(panel.gallery).is_file():
            raise MissingInput(f"{panel.gallery}: no such embeddings file; the export stage writes exports/<model>/")
        self.gallery = open_gallery(panel.gallery, IndexParams())
        self.refusal: str | None = None
        try:
            check_checkpoint(self.gallery.info, panel.checkpoint, panel.gallery)
        except IncompatibleCheckpoint as err:
            self.refusal = str(err)
            return
        self.model = load_video_clip(panel.checkpoint).eval()
        self.index = gallery_index(self.gallery)
        self.shards = FrameShards(self.gallery.info.frames)

    def search(self, query: str, top: int) -> list[Hit]:
        """The ``top`` hits of ``query`` (the same ranking as ``eva02at.search.query.search``)."""
        vector = encode_texts(self.model, [query])[0]
        return rank_clips(vector, self.gallery, top, index=self.index)

    def strip_jpeg(self, clip_id: str) -> bytes:
        """A clip's frame strip as JPEG bytes."""
        if clip_id not in self.shards:
            raise KeyError(clip_id)
        buffer = io.BytesIO()
        Image.fromarray(clip_strip(self.shards, clip_id, STRIP_FRAMES)).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()


class BenchmarkTruth:
    """Ground-truth relevance of a benchmark's clips to its sentences (EK100 MIR's soft relevancy table)."""

    def __init__(self, relevancy: str | os.PathLike, sentences: str | os.PathLike) -> None:
        for path, what in ((relevancy, "relevancy table"), (sentences, "sentence CSV")):
            if not Path(path).is_file():
                raise MissingInput(
                    f"{path}: no such {what}; `dvc repro benchmark@ek100_mir` freezes the sample's, or --relevancy '' "
                    "browses without relevance"
                )
        table = RelevancyTable.load(relevancy)
        self.relevance = table.dense()  # (videos, sentences)
        self.video_row = {clip_id: i for i, clip_id in enumerate(table.video_ids)}
        column = {sentence_id: j for j, sentence_id in enumerate(table.sentence_ids)}
        ids, texts = read_sentences(sentences)
        missing = [sentence_id for sentence_id in ids if sentence_id not in column]
        if missing:
            raise MissingInput(f"{sentences}: sentence(s) {missing[:3]} are not in the relevancy table {relevancy}")
        self.text_column: dict[str, int] = {}
        for sentence_id, text in zip(ids, texts, strict=True):
            self.text_column.setdefault(text.strip(), column[sentence_id])  # repeated texts: the first one

    @property
    def queries(self) -> list[str]:
        return list(self.text_column)

    def of(self, query: str, clip_id: str) -> float | None:
        """R of the clip for a benchmark query; None when the query or the clip is not the benchmark's."""
        column, row = self.text_column.get(query.strip()), self.video_row.get(clip_id)
        return None if column is None or row is None else float(self.relevance[row, column])


def make_app(panels: list[Panel], truth: BenchmarkTruth | None = None, max_top: int = 50) -> FastAPI:
    """The page, ``/api/search?q=...&top=...`` (JSON, one entry per panel) and ``/strip/<panel>/<clip_id>``."""
    loaded = [PanelSearch(panel) for panel in panels]
    page = files("eva02at.search").joinpath("browse.html").read_text(encoding="utf-8")
    app = FastAPI(title="eva02at browse", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.panels = loaded  # the loaded panels, for callers that measure or inspect them

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/queries")
    def queries() -> list[str]:
        return truth.queries if truth else []

    @app.get("/api/search")
    def search(q: str = Query(...), top: int = Query(5)) -> dict:
        if not q.strip():
            raise HTTPException(400, "the query is empty")
        if not 1 <= top <= max_top:
            raise HTTPException(400, f"top must be between 1 and {max_top}, got {top}")
        answers = []
        for number, side in enumerate(loaded):
            answer = {**asdict(side.panel), "refused": side.refusal, "hits": [], "seconds": 0.0}
            if side.refusal is None:
                start = time.perf_counter()
                try:
                    hits = side.search(q, top)
                except SearchError as err:
                    raise HTTPException(400, str(err)) from err
                answer["seconds"] = time.perf_counter() - start
                answer["hits"] = [hit_record(hit, truth.of(q, hit.clip_id) if truth else None, number) for hit in hits]
            answers.append(answer)
        benchmark_query = bool(truth and q.strip() in truth.text_column)
        return {"query": q, "benchmark_query": benchmark_query, "marks": MARK_COLORS, "panels": answers}

    @lru_cache(maxsize=4096)
    def strip(number: int, clip_id: str) -> bytes:
        return loaded[number].strip_jpeg(clip_id)

    @app.get("/strip/{number}/{clip_id}")
    def strip_image(number: int, clip_id: str) -> Response:
        if not 0 <= number < len(loaded) or loaded[number].refusal is not None:
            raise HTTPException(404, f"no panel {number} with a gallery")
        try:
            return Response(strip(number, clip_id), media_type="image/jpeg")
        except KeyError:
            raise HTTPException(404, f"{clip_id}: not a clip of {loaded[number].panel.gallery}") from None

    return app


def hit_record(hit: Hit, relevance: float | None, panel: int) -> dict:
    """A hit as the page shows it: its fields, R and its mark as in the retrieval grid, its strip's URL."""
    mark = None if relevance is None else "relevant" if relevance == 1 else "partial" if relevance > 0 else "none"
    return {**asdict(hit), "relevance": relevance, "mark": mark, "strip": f"/strip/{panel}/{hit.clip_id}"}


def run_browse(args: argparse.Namespace) -> int:
    """``eva02at browse``: load the panels, then serve the page until interrupted; returns the exit status."""
    panels = [Panel(*values) for values in args.panel or DEFAULT_PANELS]
    truth = BenchmarkTruth(args.relevancy, args.sentences) if args.relevancy else None
    app = make_app(panels, truth)
    print(f"eva02at browse: http://{args.host}:{args.port}/ ({', '.join(p.name for p in panels)}); Ctrl-C stops")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
