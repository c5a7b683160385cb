"""``eva02at browse``: the API ranks as ``eva02at search`` does, refuses what it refuses, colours benchmark queries
by their relevance, and the page, driven by headless Chromium, shows the same hits."""

from __future__ import annotations

import io
import socket
import threading

import numpy as np
import pandas as pd
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from eva02at.cli import main as cli
from eva02at.core.errors import MissingInput
from eva02at.data.labels import RelevancyTable
from eva02at.export.inference import export_videos
from eva02at.models import load_video_clip
from eva02at.search.browse import BenchmarkTruth, Panel, make_app
from eva02at.search.query import IncompatibleCheckpoint, search
from tests.chromium import Chromium, find_chromium
from tests.test_embeddings import make_checkpoint, make_shards

QUERY, OTHER_SENTENCE = "put the lid on the pan", "wash the cup"
RELEVANCE = np.array([[1.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.5, 0.5], [0.0, 0.0], [1.0, 0.5]])  # clips x sentences


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Six clips exported by one checkpoint, another checkpoint, and a two-sentence benchmark over the clips."""
    root = tmp_path_factory.mktemp("browse")
    checkpoint, other = make_checkpoint(root / "model.pt"), make_checkpoint(root / "other.pt", seed=1)
    clips = [{"clip_id": f"c{i}", "source": f"v{i % 2}.mp4", "start": float(i), "end": i + 1.5} for i in range(6)]
    frames = make_shards(root / "frames", clips)
    export_videos(load_video_clip(checkpoint).eval(), checkpoint, frames, root / "clips.parquet", "demo")
    values = np.unique(RELEVANCE)
    codes = np.searchsorted(values, RELEVANCE).astype(np.uint8)  # one signature per clip and per sentence
    table = RelevancyTable(np.arange(6), np.arange(2), codes, values, [c["clip_id"] for c in clips], ["s0", "s1"])
    table.save(root / "truth.npz")
    pd.DataFrame({"narration_id": ["s0", "s1"], "narration": [QUERY, OTHER_SENTENCE]}).to_csv(
        root / "sentences.csv", index=False
    )
    return root, checkpoint, other


def client(root, checkpoint, other) -> TestClient:
    panels = [
        Panel("own", str(checkpoint), str(root / "clips.parquet")),
        Panel("other", str(other), str(root / "clips.parquet")),
    ]
    return TestClient(make_app(panels, BenchmarkTruth(root / "truth.npz", root / "sentences.csv")))


def test_the_api_ranks_as_search_does_and_colours_benchmark_queries(gallery):
    root, checkpoint, _other = gallery
    answer = client(*gallery).get("/api/search", params={"q": QUERY, "top": 4}).json()
    assert answer["benchmark_query"] and [p["name"] for p in answer["panels"]] == ["own", "other"]
    own = answer["panels"][0]
    expected = search(QUERY, checkpoint, root / "clips.parquet", top=4)
    assert [h["clip_id"] for h in own["hits"]] == [h.clip_id for h in expected]
    assert [h["score"] for h in own["hits"]] == pytest.approx([h.score for h in expected], abs=1e-6)
    assert [(h["source"], h["start"], h["end"]) for h in own["hits"]] == [(h.source, h.start, h.end) for h in expected]
    rows = [int(h["clip_id"][1:]) for h in own["hits"]]
    assert [h["relevance"] for h in own["hits"]] == RELEVANCE[rows, 0].tolist()
    marks = {1.0: "relevant", 0.5: "partial", 0.0: "none"}
    assert [h["mark"] for h in own["hits"]] == [marks[r] for r in RELEVANCE[rows, 0]]
    free = client(*gallery).get("/api/search", params={"q": "open the fridge"}).json()
    assert not free["benchmark_query"] and all(h["relevance"] is None for h in free["panels"][0]["hits"])


def test_a_panel_whose_checkpoint_search_refuses_shows_the_same_refusal(gallery):
    root, _checkpoint, other = gallery
    with pytest.raises(IncompatibleCheckpoint) as refused:
        search(QUERY, other, root / "clips.parquet")
    panel = client(*gallery).get("/api/search", params={"q": QUERY}).json()["panels"][1]
    assert panel["refused"] == str(refused.value) and panel["hits"] == []
    assert client(*gallery).get("/strip/1/c0").status_code == 404


def test_strips_are_the_clips_frames_and_bad_requests_say_why(gallery):
    browser = client(*gallery)
    strip = browser.get("/strip/0/c3")
    assert strip.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(strip.content)).size == (4 * 32, 32)  # four 32-pixel frames side by side
    assert browser.get("/strip/0/nope").json()["detail"].startswith("nope: not a clip of")
    assert browser.get("/api/search", params={"q": "  "}).json()["detail"] == "the query is empty"
    assert browser.get("/api/search", params={"q": QUERY, "top": 0}).status_code == 400


def test_a_missing_gallery_is_named(gallery, tmp_path):
    _root, checkpoint, _ = gallery
    with pytest.raises(MissingInput, match=r"absent\.parquet: no such embeddings file"):
        make_app([Panel("own", str(checkpoint), str(tmp_path / "absent.parquet"))])


def test_missing_benchmark_files_are_named(gallery, tmp_path, capsys):
    root, checkpoint, _ = gallery
    with pytest.raises(MissingInput, match=r"absent\.npz: no such relevancy table"):
        BenchmarkTruth(tmp_path / "absent.npz", root / "sentences.csv")
    panel = ["own", str(checkpoint), str(root / "clips.parquet")]
    benchmark = ["--relevancy", str(root / "truth.npz"), "--sentences", str(tmp_path / "absent.csv")]
    status = cli.main(["browse", "--panel", *panel, *benchmark])
    assert status == 1
    assert "absent.csv: no such sentence CSV" in capsys.readouterr().err


def test_the_command_line_binds_to_this_machine_only_by_default():
    args = cli.build_parser().parse_args(["browse"])
    assert args.host == "127.0.0.1" and args.panel is None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(gallery):
    """The app served by uvicorn on loopback in a thread, as ``eva02at browse`` serves it."""
    app = client(*gallery).app
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    while not running.started and thread.is_alive():
        thread.join(0.05)
    yield f"http://127.0.0.1:{config.port}/"
    running.should_exit = True
    thread.join()


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
def test_the_page_in_headless_chromium_shows_what_search_finds(gallery, server, tmp_path):
    root, checkpoint, _ = gallery
    with Chromium(tmp_path / "profile") as page:
        page.open(server)
        page.type_text("#query", QUERY)
        page.press_enter()
        page.wait_until("document.getElementById('status').dataset.state === 'done'", "the hits")
        page.wait_until("Array.from(document.images).every(image => image.complete)", "the frame strips")
        shown = page.evaluate(
            "Array.from(document.querySelectorAll('.panel')).map(p => ({name: p.dataset.name,"
            " refused: p.querySelector('.refused')?.textContent ?? null,"
            " hits: Array.from(p.querySelectorAll('.hit')).map(h => [h.dataset.clipId, Number(h.dataset.score),"
            " h.dataset.mark, h.querySelector('img').naturalWidth])}))"
        )
    expected = search(QUERY, checkpoint, root / "clips.parquet", top=5)
    assert [p["name"] for p in shown] == ["own", "other"]
    assert [h[0] for h in shown[0]["hits"]] == [h.clip_id for h in expected]
    assert [h[1] for h in shown[0]["hits"]] == pytest.approx([h.score for h in expected], abs=1e-6)
    marks = {1.0: "relevant", 0.5: "partial", 0.0: "none"}
    assert [h[2] for h in shown[0]["hits"]] == [marks[RELEVANCE[int(h.clip_id[1:]), 0]] for h in expected]
    assert all(h[3] == 4 * 32 for h in shown[0]["hits"])  # the strips loaded: four 32-pixel frames
    assert shown[1]["hits"] == [] and "not known to be compatible" in shown[1]["refused"]
