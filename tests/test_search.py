"""Text-to-video search: a planted clip is found with every index, other checkpoints and other exports' codes are
refused, the command prints and draws."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from eva02at.cli import main as cli
from eva02at.core.errors import MissingInput
from eva02at.export.codes import BinaryCodeParams, CodesError, CodesParams, codes_path, make_codes, write_codes
from eva02at.export.embeddings import VIDEO, read_embeddings, write_embeddings
from eva02at.export.inference import export_videos
from eva02at.models import load_video_clip
from eva02at.models.compatibility import load_reference
from eva02at.search.index import IndexParams
from eva02at.search.query import IncompatibleCheckpoint, may_search, run_search, search
from eva02at.train.losses import finetuning, get_loss, infonce  # noqa: F401  (registers their losses)
from eva02at.train.tasks import VideoTextTask
from tests.test_embeddings import make_checkpoint, make_shards

QUERY = "put the lid on the pan"


@pytest.fixture(autouse=True)
def vectors_cache(tmp_path, monkeypatch):
    """The memory-mapped vectors of the binary index go to the test's folder, not the user's cache."""
    monkeypatch.setenv("EVA02AT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """An export of six clips in which clip ``p3`` got the query's own direction (times 1, unit norm)."""
    root = tmp_path_factory.mktemp("search")
    checkpoint = make_checkpoint(root / "model.pt")
    clips = [{"clip_id": f"p{i}", "source": f"v{i % 2}.mp4", "start": float(i), "end": i + 1.5} for i in range(6)]
    frames = make_shards(root / "frames", clips)
    model = load_video_clip(checkpoint).eval()
    export_videos(model, checkpoint, frames, root / "clips.parquet", "demo")
    with torch.no_grad():
        query = model.encode_text(model.tokenize([QUERY]))[0].double().numpy()
    videos = read_embeddings(root / "clips.parquet", VIDEO)
    vectors = videos.vectors.copy()
    vectors[videos.ids.index("p3")] = query / np.linalg.norm(query)
    columns = {name: videos.table[name].to_pylist() for name in ("clip_id", "source", "start", "end", "text")}
    write_embeddings(root / "planted.parquet", columns, vectors, videos.info)
    config = CodesParams(int8=True, binary=BinaryCodeParams(bits_per_dim=2))
    write_codes(codes_path(root / "planted.parquet"), make_codes(videos.ids, vectors, videos.info, config))
    return root, checkpoint


def test_the_planted_clip_comes_first(planted):
    root, checkpoint = planted
    hits = search(QUERY, checkpoint, root / "planted.parquet", top=4)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert hits[0].clip_id == "p3" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert (hits[0].source, hits[0].start, hits[0].end) == ("v1.mp4", 3.0, 4.5)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[1] < 0.999
    assert len(search(QUERY, checkpoint, root / "planted.parquet", top=50)) == 6


@pytest.mark.parametrize(
    "index",
    [IndexParams(kind="binary", nlist=0), IndexParams(kind="binary", rerank="int8"), IndexParams(exact_max=1)],
    ids=["binary", "binary-int8", "auto-large"],
)
def test_the_codes_find_what_exact_search_finds(planted, index):
    root, checkpoint = planted
    exact = search(QUERY, checkpoint, root / "planted.parquet", top=6, index=IndexParams(kind="flat"))
    found = search(QUERY, checkpoint, root / "planted.parquet", top=6, index=index)
    assert [h.clip_id for h in found] == [h.clip_id for h in exact]  # six clips: the shortlist holds them all
    tolerance = 0.02 if index.rerank == "int8" else 1e-6
    assert [h.score for h in found] == pytest.approx([h.score for h in exact], abs=tolerance)


def test_another_checkpoint_is_refused(planted, tmp_path):
    root, checkpoint = planted
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    info = read_embeddings(root / "planted.parquet").info
    assert may_search(checkpoint, info) and not may_search(other, info)
    with pytest.raises(IncompatibleCheckpoint, match=r"exported with .*model\.pt .*other\.pt is another model"):
        search(QUERY, other, root / "planted.parquet")
    copy = shutil.copy(checkpoint, tmp_path / "same_weights.pt")  # the same file elsewhere is the same model
    assert search(QUERY, copy, root / "planted.parquet", top=1)[0].clip_id == "p3"
    with pytest.raises(ValueError, match="at least 1"):
        search(QUERY, checkpoint, root / "planted.parquet", top=0)


def trained_against(reference, path, seed):
    """A new model (random weights of ``seed``) saved as compatible fine-tuning against ``reference`` saves it."""
    model = load_video_clip(make_checkpoint(path, seed=seed))
    VideoTextTask(model, get_loss("infonce"), reference=load_reference(reference, model, 1.0)).save(path, {})
    return path


def test_a_newer_compatible_checkpoint_searches_an_older_gallery(planted, tmp_path, capsys):
    root, checkpoint = planted
    gallery = root / "planted.parquet"  # exported by ``checkpoint``
    newer = trained_against(checkpoint, tmp_path / "newer.pt", seed=2)
    newest = trained_against(newer, tmp_path / "newest.pt", seed=3)  # compatible with newer, so with the first too
    info = read_embeddings(gallery).info
    assert may_search(newer, info) and may_search(newest, info)
    query = load_video_clip(newest).eval()
    with torch.no_grad():
        vector = torch.nn.functional.normalize(query.encode_text(query.tokenize([QUERY])), dim=-1)[0].numpy()
    videos = read_embeddings(gallery)
    expected = np.argsort(-(videos.vectors @ vector), kind="stable")[:3]
    hits = search(QUERY, newest, gallery, top=3)  # the newest model's query against the first model's gallery
    assert [h.clip_id for h in hits] == [videos.ids[i] for i in expected]
    assert [h.score for h in hits] == pytest.approx((videos.vectors @ vector)[expected].tolist(), abs=1e-5)
    argv = ["search", QUERY, "--checkpoint", str(newest), "--embeddings", str(gallery), "--out", ""]
    assert cli.main(argv) == 0 and capsys.readouterr().out.splitlines()[2].split()[2] == hits[0].clip_id


def test_a_checkpoint_not_known_to_be_compatible_is_refused(planted, tmp_path, capsys):
    root, _ = planted
    stranger = make_checkpoint(tmp_path / "stranger.pt", seed=4)
    elsewhere = trained_against(stranger, tmp_path / "elsewhere.pt", seed=5)  # compatible, but with another model
    for other, trained in [(stranger, "trained without compatibility"), (elsewhere, "trained to stay compatible with")]:
        with pytest.raises(IncompatibleCheckpoint, match=f"not known to be compatible with it \\({trained}"):
            search(QUERY, other, root / "planted.parquet")
    argv = ["search", QUERY, "--checkpoint", str(elsewhere), "--embeddings", str(root / "planted.parquet")]
    assert cli.main([*argv, "--out", ""]) == 1
    error = capsys.readouterr().err
    assert error.startswith("eva02at search: ") and "finetune.compatible_with" in error and len(error.splitlines()) == 1


def test_the_command_prints_hits_and_draws_them(planted, tmp_path, capsys):
    root, checkpoint = planted
    args = argparse.Namespace(
        query=QUERY,
        top=3,
        checkpoint=str(checkpoint),
        embeddings=str(root / "planted.parquet"),
        out=tmp_path / "s.png",
        index="auto",
        nprobe=None,
        shortlist=None,
        rerank=None,
        cache=None,
    )
    assert run_search(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "clip_id", "source", "start", "end"]
    assert set(lines[1]) <= {"-", " "}  # the rule under the header
    assert lines[2].split() == ["1", "1.0000", "p3", "v1.mp4", "3.00", "4.50"]
    assert len(lines) == 6 and lines[-1].endswith("s.png")
    with Image.open(tmp_path / "s.png") as image:
        assert image.format == "PNG" and image.size == (1200, 50 + 3 * 175)  # one 1.75-inch row per hit


def test_codes_of_another_export_are_refused(planted, tmp_path):
    root, checkpoint = planted
    shutil.copy(root / "planted.parquet", tmp_path / "planted.parquet")
    with pytest.raises(MissingInput, match=r"planted\.codes\.parquet.*export\.codes\.binary"):
        search(QUERY, checkpoint, tmp_path / "planted.parquet", index=IndexParams(kind="binary"))
    videos = read_embeddings(root / "planted.parquet")
    codes = make_codes(videos.ids[::-1], videos.vectors[::-1], videos.info, CodesParams(binary=BinaryCodeParams()))
    write_codes(codes_path(tmp_path / "planted.parquet"), codes)  # same clips, another order
    with pytest.raises(CodesError, match=r"was not made from .*planted\.parquet"):
        search(QUERY, checkpoint, tmp_path / "planted.parquet", index=IndexParams(kind="binary"))


def test_the_command_line_searches_with_the_chosen_index(planted, capsys):
    root, checkpoint = planted
    argv = ["search", QUERY, "--checkpoint", str(checkpoint), "--embeddings", str(root / "planted.parquet")]
    assert cli.main([*argv, "--top", "2", "--index", "binary", "--out", ""]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[2].split()[:3] == ["1", "1.0000", "p3"]
    assert cli.main([*argv, "--index", "ivf", "--nprobe", "0", "--out", ""]) == 1
    assert "nprobe" in capsys.readouterr().err
