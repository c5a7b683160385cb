"""The scale benchmark's tables are what the project's readers accept, its components run, and its report's
growth exponents are right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import scale
from eva02at.data import extract
from eva02at.data.shards import FrameShards

CLIPS = 1_500  # about 0.04% of EgoClip


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale")
    scale.write_tables(CLIPS, path)
    return path


def test_tables_in_the_real_formats_are_read_whole(work):
    scale.read_egoclip(CLIPS, work)  # each asserts its row count and no row error
    scale.read_egomcq(CLIPS, work)
    scale.read_ek100(CLIPS, work)
    scale.soft_labels(CLIPS, work)
    scale.evaluate(CLIPS, work)  # every EK100 test video has a relevance-1 sentence


def test_fake_decoded_frames_resume_and_index_every_clip(work, monkeypatch):
    for name in ("index_video", "scaled_frames", "encode_jpeg"):
        monkeypatch.setattr(extract, name, getattr(extract, name))  # restored after the fake decoder
    scale.frames_plan(CLIPS, work)
    shards = FrameShards(scale.frames_dir(CLIPS, work))
    assert len(shards.ids) == CLIPS and len(shards.shard_names) >= CLIPS // scale.CLIPS_PER_SHARD
    stamps = {p.name: p.stat().st_mtime_ns for p in (scale.frames_dir(CLIPS, work) / "shards").iterdir()}
    scale.frames_resume(CLIPS, work)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (scale.frames_dir(CLIPS, work) / "shards").iterdir()}
    scale.train_index(CLIPS, work)


def test_a_component_is_measured_in_its_own_process(work):
    result = scale.measure("read egomcq", CLIPS, work)
    assert result["seconds"] > 0 and result["cpu_seconds"] > 0 and 0 < result["peak_gib"] < 8


def test_growth_exponent_and_registry():
    assert scale.growth(2.0, 20.0, 10) == pytest.approx(1.0)
    assert scale.growth(1.0, 100.0, 10) == pytest.approx(2.0)
    assert scale.growth(3.0, 3.0, 10) == pytest.approx(0.0)
    assert list(scale.components())[: len(scale.COMPONENTS)] == list(scale.COMPONENTS)  # then the gallery's


def test_a_component_run_imports_no_later_module():
    """A component's peak memory is its own: finding it imports no module listed after its own (torch)."""
    code = "import sys; from bench import scale; scale.component('read egoclip'); print(sorted(sys.modules))"
    repo = Path(__file__).resolve().parents[1]
    loaded = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert "'bench.scale'" in loaded.stdout
    assert "'bench.scale_gallery'" not in loaded.stdout and "'torch'" not in loaded.stdout
    assert scale.component("dvc hashing of frames (egoclip)") is scale.dvc_hashing
    with pytest.raises(KeyError, match="nope"):
        scale.component("nope")


def test_a_component_name_registered_twice_is_an_error(monkeypatch):
    monkeypatch.setattr(scale, "MODULES", ("bench.scale", "bench.scale"))
    with pytest.raises(ValueError, match="already registered"):
        scale.components()


def test_the_index_is_built_from_a_manifest_alone(work):
    scale.clip_index(CLIPS, work)  # asserts every clip is placed
    shards = FrameShards(scale.data_dir(CLIPS, work) / "index")
    assert len(shards.shard_names) == -(-CLIPS // scale.CLIPS_PER_SHARD)
    assert shards._row.max() == scale.CLIPS_PER_SHARD - 1 and shards.texts(["7_egoclip"]).to_pylist() == [
        "#C C picks object 7 from the counter"
    ]
