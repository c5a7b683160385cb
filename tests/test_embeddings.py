"""Embedding exports: Parquet schema round trip, id lookup, and a tiny model's export end to end on frame shards."""

from __future__ import annotations

import hashlib
import io
import json
import mmap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from eva02at.data.jpeg import decode_jpegs
from eva02at.data.pixels import normalize
from eva02at.data.shards import MANIFEST, SHARDS, write_manifest, write_shard
from eva02at.export import embeddings
from eva02at.export.embeddings import (
    TEXT,
    VIDEO,
    ExportInfo,
    iter_vectors,
    mapped_vectors,
    read_embeddings,
    read_info,
    schema,
    stream_embeddings,
    write_embeddings,
)
from eva02at.export.inference import export_texts, export_videos, model_for_frames
from eva02at.models import from_open_clip, load_video_clip, save_video_clip


def make_checkpoint(path: Path, num_frames: int = 4, seed: int = 0) -> Path:
    """A random EVA02-Tiny-test video model (32 px) saved as a video checkpoint."""
    torch.manual_seed(seed)
    model = from_open_clip(open_clip.create_model("EVA02-Tiny-test", pretrained=None), num_frames, embed_dim=16)
    save_video_clip(model, path)
    return path


def make_shards(directory: Path, clips: list[dict], num_frames: int = 4, size: int = 32, seed: int = 0) -> Path:
    """A decoded collection in the frames stage's layout: random JPEG frames for every clip whose
    ``status`` is not "error" (default "ok"). ``clips`` give clip_id and optionally source, start, end, text."""
    rng = np.random.default_rng(seed)
    rows, manifest = [], []
    for line, clip in enumerate(clips, start=2):
        ok = clip.get("status", "ok") == "ok"
        if ok:
            jpegs = []
            for _ in range(num_frames):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
                jpegs.append(buffer.getvalue())
            rows.append(
                {"clip_id": clip["clip_id"], "view": 0, "frame_indices": list(range(num_frames)), "jpeg": jpegs}
            )
        manifest.append(
            {
                "clip_id": clip["clip_id"],
                "source": clip.get("source", f"{clip['clip_id']}.mp4"),
                "line": line,
                "start": clip.get("start", 0.0),
                "end": clip.get("end", 1.0),
                "text": clip.get("text", ""),
                "frame_indices": [list(range(num_frames))] if ok else [],
                "height": size,
                "width": size,
                "status": "ok" if ok else "error",
                "error": "" if ok else "decoding failed",
                "shard": "000000.arrow" if ok else "",
            }
        )
    write_shard(directory / SHARDS / "000000.arrow", rows)
    spec = {"num_frames": num_frames, "views": 0, "size": size, "jpeg_quality": 90, "seed": 0}
    write_manifest(directory / MANIFEST, manifest, {"spec": json.dumps(spec)})
    return directory


def info(kind: str = VIDEO) -> ExportInfo:
    return ExportInfo(
        kind, "demo", "models/x.pt", "ab" * 32, "EVA02-Tiny-test", 4 if kind == VIDEO else 0, "frames/demo"
    )


def test_video_export_round_trips(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    columns = {
        "clip_id": ["a", "b", "c"],
        "source": ["v1.mp4", "v1.mp4", "v2.mp4"],
        "start": [0.0, 1.5, 2.0],
        "end": [1.5, 3.0, 4.25],
        "text": ["open door", "", "cut onion"],
    }
    write_embeddings(tmp_path / "v.parquet", columns, vectors, info())
    schema = pq.read_schema(tmp_path / "v.parquet")
    assert schema.field("embedding").type == pa.list_(pa.float32(), 5)  # fixed size, not a variable list
    assert schema.field("start").type == pa.float64()
    back = read_embeddings(tmp_path / "v.parquet", VIDEO)
    assert back.ids == ["a", "b", "c"]
    assert back.vectors.dtype == np.float32 and np.array_equal(back.vectors, vectors)
    assert {name: back.table[name].to_pylist() for name in columns} == columns
    assert back.info == info() == read_info(tmp_path / "v.parquet")


def test_text_export_round_trips_and_kinds_are_checked(tmp_path):
    vectors = np.eye(2, 4, dtype=np.float32)
    write_embeddings(tmp_path / "t.parquet", {"sentence_id": ["s2", "s1"], "text": ["x", "y"]}, vectors, info(TEXT))
    back = read_embeddings(tmp_path / "t.parquet", TEXT)
    assert back.ids == ["s2", "s1"] and back.table["text"].to_pylist() == ["x", "y"]
    assert np.array_equal(back.select(["s1", "s2"], "test"), vectors[::-1])  # by id, in the order asked
    with pytest.raises(ValueError, match=r"t\.parquet.*s9"):
        back.select(["s1", "s9"], "test")
    with pytest.raises(ValueError, match="holds text embeddings, expected video"):
        read_embeddings(tmp_path / "t.parquet", VIDEO)
    with pytest.raises(FileNotFoundError, match=r"missing\.parquet"):
        read_embeddings(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not an eva02at embeddings file"):
        read_embeddings(tmp_path / "other.parquet")


def test_mismatched_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="do not match"):
        write_embeddings(tmp_path / "t.parquet", {"sentence_id": ["a"], "text": ["x"]}, np.zeros((2, 3)), info(TEXT))
    assert not (tmp_path / "t.parquet").exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 4-frame tiny model exporting an 8-frame collection (one clip failed to decode) and three texts."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = make_checkpoint(root / "model.pt")
    clips = [
        {"clip_id": "c3", "source": "b.mp4", "start": 2.0, "end": 3.5, "text": "wash cup"},
        {"clip_id": "c1", "source": "a.mp4", "start": 0.0, "end": 1.0},
        {"clip_id": "bad", "status": "error"},
        {"clip_id": "c2", "source": "a.mp4", "start": 1.0, "end": 2.0},
    ]
    frames = make_shards(root / "frames", clips, num_frames=8)
    model = load_video_clip(checkpoint)
    count = export_videos(model, checkpoint, frames, root / "v.parquet", "demo", batch_size=2)
    export_texts(
        model, checkpoint, ["s1", "s2", "s3"], ["open door", "cut onion", "open door"], root / "t.parquet", "demo"
    )
    return root, checkpoint, frames, model, count


def test_export_writes_every_decoded_clip_with_its_ids(exported):
    root, checkpoint, frames, model, count = exported
    videos = read_embeddings(root / "v.parquet", VIDEO)
    assert count == 3 and videos.ids == ["c3", "c1", "c2"]  # manifest order, the failed clip left out
    assert videos.table["source"].to_pylist() == ["b.mp4", "a.mp4", "a.mp4"]
    assert videos.table["end"].to_pylist() == [3.5, 1.0, 2.0]
    assert videos.table["text"].to_pylist() == ["wash cup", "", ""]
    assert videos.info.checkpoint == str(checkpoint) and videos.info.frames == str(frames)
    assert videos.info.checkpoint_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert videos.info.num_frames == 8 and model.num_frames == 4  # the export adapted a copy, not the model


def test_exported_vectors_are_the_models_normalised_embeddings(exported):
    root, checkpoint, frames, _, _ = exported
    model = load_video_clip(checkpoint).eval()
    model.set_num_frames(8)
    shards_dir = frames / SHARDS / "000000.arrow"
    table = pa.ipc.open_file(pa.memory_map(str(shards_dir))).read_all()
    by_clip = {row["clip_id"]: row["jpeg"] for row in table.to_pylist()}
    clips = torch.stack([torch.from_numpy(decode_jpegs(by_clip[c])).permute(0, 3, 1, 2) for c in ["c3", "c1", "c2"]])
    with torch.no_grad():
        expected = model.encode_video(normalize(clips, model.image_mean, model.image_std)).double()
        texts = model.encode_text(model.tokenize(["open door", "cut onion", "open door"])).double()
    expected, texts = expected / expected.norm(dim=1, keepdim=True), texts / texts.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(read_embeddings(root / "v.parquet").vectors, expected.numpy(), atol=1e-5)
    exported_texts = read_embeddings(root / "t.parquet", TEXT)
    assert exported_texts.ids == ["s1", "s2", "s3"] and exported_texts.info.frames == ""
    np.testing.assert_allclose(exported_texts.vectors, texts.numpy(), atol=1e-5)


def test_repeated_sentence_ids_and_wrong_frame_sizes_are_refused(exported, tmp_path):
    _, checkpoint, _, model, _ = exported
    with pytest.raises(ValueError, match=r"unique.*\['s1'\]"):
        export_texts(model, checkpoint, ["s1", "s1"], ["a", "b"], tmp_path / "t.parquet", "demo")
    frames = make_shards(tmp_path / "big", [{"clip_id": "a"}], num_frames=4, size=64)
    with pytest.raises(ValueError, match="64 px frames but the model takes 32 px"):
        model_for_frames(model, frames)


def whole_table_bytes(path: Path, columns: dict[str, list], vectors: np.ndarray, row_group: int) -> bytes:
    """The export as ``pq.write_table`` writes the whole table built in memory, in row groups of ``row_group``."""
    target = schema(VIDEO, vectors.shape[1])
    arrays = [pa.array(columns[name], type=target.field(name).type) for name in target.names[:-1]]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    table = pa.Table.from_arrays([*arrays, embedding], schema=target)
    table = table.replace_schema_metadata({b"eva02at": json.dumps(asdict(info()), sort_keys=True).encode()})
    pq.write_table(table, path, row_group_size=row_group)
    return path.read_bytes()


def test_a_streamed_export_is_the_file_of_the_whole_table(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings, "ROW_GROUP", 16)  # 50 rows: four row groups, batches across their edges
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    columns = {
        "clip_id": [f"c{i}" for i in range(50)],
        "source": [f"v{i // 7}.mp4" for i in range(50)],
        "start": [i * 0.5 for i in range(50)],
        "end": [i * 0.5 + 2 for i in range(50)],
        "text": ["" if i % 3 else f"t{i}" for i in range(50)],
    }
    batches = np.split(vectors, [3, 23, 24, 40])  # 3, 20, 1, 16 and 10 rows
    stream_embeddings(tmp_path / "s.parquet", columns, batches, info(), 8)
    assert (tmp_path / "s.parquet").read_bytes() == whole_table_bytes(tmp_path / "w.parquet", columns, vectors, 16)
    assert pq.ParquetFile(tmp_path / "s.parquet").num_row_groups == 4
    back = read_embeddings(tmp_path / "s.parquet", VIDEO)
    assert back.ids == columns["clip_id"] and np.array_equal(back.vectors, vectors)
    groups = list(iter_vectors(tmp_path / "s.parquet"))
    assert [len(v) for _, v in groups] == [16, 16, 16, 2] and np.array_equal(
        np.concatenate([v for _, v in groups]), vectors
    )
    mapped = mapped_vectors(tmp_path / "s.parquet", tmp_path / "cache")
    assert isinstance(mapped.base, mmap.mmap) and np.array_equal(mapped, vectors)
    with pytest.raises(ValueError, match=r"short\.parquet: 49 vectors do not match 50 ids"):
        stream_embeddings(tmp_path / "short.parquet", columns, [vectors[:49]], info(), 8)
    with pytest.raises(ValueError, match=r"wide\.parquet: a batch of vectors \(50, 9\) is not \(n, 8\)"):
        stream_embeddings(tmp_path / "wide.parquet", columns, [np.zeros((50, 9))], info(), 8)
    assert not (tmp_path / "short.parquet").exists() and not (tmp_path / "wide.parquet").exists()


def test_an_export_of_one_row_group_is_the_file_written_before_streaming(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((5, 4)).astype(np.float32)
    columns = {"clip_id": list("abcde"), "source": ["v"] * 5, "start": [0.0] * 5, "end": [1.0] * 5, "text": [""] * 5}
    stream_embeddings(tmp_path / "s.parquet", columns, [vectors[:2], vectors[2:]], info(), 4)
    assert (tmp_path / "s.parquet").read_bytes() == whole_table_bytes(tmp_path / "w.parquet", columns, vectors, None)
