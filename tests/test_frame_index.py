"""The columnar clip index of FrameShards against a brute-force index read from every shard, and the bound
on open memory maps."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from eva02at.data.shards import MANIFEST, SHARDS, FrameShards, ShardReadError, read_shard, write_manifest, write_shard
from eva02at.train.data import ClipPairs


def manifest_row(clip_id: str, shard: str, ok: bool) -> dict:
    return {
        "clip_id": clip_id,
        "source": "v.mp4",
        "line": 2,
        "start": 0.0,
        "end": 1.0,
        "text": f"text of {clip_id}",
        "frame_indices": [[0, 1]] if ok else [],
        "height": 8 if ok else 0,
        "width": 8 if ok else 0,
        "status": "ok" if ok else "error",
        "error": "" if ok else "broken",
        "shard": shard if ok else "",
        "clamped": [],
    }


def write_collection(directory: Path, shards: int, clips_per_shard: int, seed: int = 0) -> dict[str, list]:
    """Shards of fake JPEG bytes (the index never decodes) with failed clips between the decoded ones, shard
    names not in manifest order; returns every decoded clip's views of bytes, from the writer's side."""
    rng = np.random.default_rng(seed)
    (directory / SHARDS).mkdir(parents=True)
    rows, views_of = [], {}
    for s in rng.permutation(shards):
        name = f"shard-{s:05d}.arrow"
        views = []
        for k in range(clips_per_shard):
            clip = f"clip-{rng.integers(1 << 40):011x}-{k}"
            if rng.random() < 0.2:
                rows.append(manifest_row(clip, name, ok=False))
                continue
            jpegs = [[rng.bytes(5), rng.bytes(7)] for _ in range(int(rng.integers(1, 4)))]
            views += [
                {"clip_id": clip, "view": v, "frame_indices": [2 * v, 2 * v + 1], "jpeg": j}
                for v, j in enumerate(jpegs)
            ]
            views_of[clip] = jpegs
            rows.append(manifest_row(clip, name, ok=True))
        write_shard(directory / SHARDS / name, views)
    write_manifest(directory / MANIFEST, rows)
    return views_of


def brute_force_index(directory: Path) -> dict[str, tuple[str, int]]:
    """The index as it used to be built: every shard opened, clip -> (shard file, row)."""
    return {
        clip: (path.name, row)
        for path in sorted((directory / SHARDS).iterdir())
        for row, clip in enumerate(read_shard(path)["clip_id"].to_pylist())
    }


def open_maps(directory: Path) -> int:
    """Memory maps of this process onto files under ``directory`` (from /proc/self/maps)."""
    text = Path("/proc/self/maps").read_text()
    return len({line.split(maxsplit=5)[-1] for line in text.splitlines() if str(directory) in line})


def test_columnar_index_finds_every_clip_where_the_shards_hold_it(tmp_path):
    views_of = write_collection(tmp_path, shards=7, clips_per_shard=9)
    shards = FrameShards(tmp_path, max_open=2)
    brute = brute_force_index(tmp_path)
    assert sorted(shards.clip_ids) == sorted(brute) == sorted(views_of)
    for clip, (name, row) in brute.items():
        position = shards.positions([clip])[0]
        assert shards.shard_names[shards._shard[position]] == name and shards._row[position] == row
        assert shards.num_views(clip) == len(views_of[clip])
        for v, jpegs in enumerate(views_of[clip]):
            assert shards.jpegs(clip, v) == jpegs
            assert shards.frame_indices(clip, v) == [2 * v, 2 * v + 1]
    assert "clip-missing" not in shards and shards.clip_ids[0] in shards
    assert list(shards.positions(["clip-missing", shards.clip_ids[3]])) == [-1, 3]
    assert shards.texts(shards.ids[:2]).to_pylist() == [f"text of {c}" for c in shards.clip_ids[:2]]
    # every clip at once takes the short paths (no hash tables): the same answers as looking each one up
    assert shards.texts(shards.ids).to_pylist() == [f"text of {c}" for c in shards.clip_ids]
    assert (
        shards.positions(shards.ids).tolist() == shards.positions(shards.clip_ids).tolist() == list(range(len(brute)))
    )
    with pytest.raises(KeyError, match="not in the shards"):
        shards.jpegs("clip-missing")
    clone = pickle.loads(pickle.dumps(shards))
    assert all(clone.jpegs(c) == views_of[c][0] for c in brute)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="counts maps from /proc/self/maps")
def test_at_most_max_open_shards_stay_mapped(tmp_path):
    write_collection(tmp_path, shards=12, clips_per_shard=3, seed=1)
    shards = FrameShards(tmp_path, max_open=3)
    peak = 0
    for clip in shards.clip_ids * 2:  # every shard, twice, so closed maps are reopened
        shards.jpegs(clip)
        peak = max(peak, open_maps(tmp_path / SHARDS))
    assert peak == 3 and len(shards.shard_names) == 12


def test_a_shard_whose_rows_are_not_the_manifests_is_named(tmp_path):
    write_collection(tmp_path, shards=2, clips_per_shard=4, seed=2)
    shards = FrameShards(tmp_path)
    clip = shards.clip_ids[0]
    path = tmp_path / SHARDS / shards.shard_names[int(shards._shard[0])]
    table = read_shard(path)
    rows = [
        {"clip_id": c, "view": 0, "frame_indices": [0, 1], "jpeg": [b"a", b"b"]}
        for c in table["clip_id"].to_pylist()[::-1]
    ]
    write_shard(path, rows)
    assert len(rows) > 1  # reversed, the rows differ
    with pytest.raises(ShardReadError, match=f"{path}.*not those manifest.parquet places"):
        FrameShards(tmp_path).jpegs(clip)


def test_clip_pairs_resolve_names_once_and_name_missing_clips(tmp_path):
    views_of = write_collection(tmp_path, shards=3, clips_per_shard=5, seed=3)
    shards = FrameShards(tmp_path)
    clips = sorted(views_of)[::-1]
    pairs = ClipPairs(shards, clips, [f"caption {c}" for c in clips])
    for video, clip in enumerate(clips):
        jpegs, text, *_ = pairs[(1, video, video)]
        assert jpegs == views_of[clip][1 % len(views_of[clip])] and text == f"caption {clip}"
    with pytest.raises(Exception, match=r"1 clip\(s\) are not in the frame shards .*clip-nowhere"):
        ClipPairs(shards, [*clips, "clip-nowhere"], ["x"] * (len(clips) + 1))
