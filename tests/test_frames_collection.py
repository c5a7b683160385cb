"""A frames collection is one params entry: a toy collection added to a copy of the project's params is checked by
the frames stage's validation, becomes its own ``frames@<name>`` stage through the unchanged dvc.yaml, and the
stage decodes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dvc.repo import Repo

from eva02at.core.config import ConfigError, read_section
from eva02at.data.shards import FrameShards
from rehearsal.project import copy_project, git, override_params
from stages.frames import FramesParams, typed_collections

TOY = {
    "format": "videolist",  # a registered annotation format (eva02at.data.annotations)
    "annotations": "toy/clips.csv",
    "videos": "data/sample/ego4d",
    "num_frames": 2,
    "clip_seconds": 1.0,
}
VIDEO = "ego4d_3c0dffd0_012_014.mp4"  # 2 s: two clips of 1 s


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project with the toy collection's annotation file and params entry: nothing else changes."""
    project = copy_project(tmp_path / "project")
    (project / "toy").mkdir()
    (project / "toy/clips.csv").write_text(f"file\n{VIDEO}\n")
    override_params(project / "params.yaml", {"frames": {"collections": {"toy_clips": TOY}}})
    git(project, "init", "-q")  # DVC reads a project in a git repository
    return project


def test_the_frames_stage_validation_accepts_the_entry_and_refuses_an_unknown_format(project):
    frames = read_section(FramesParams, project / "params.yaml", "frames")
    collection, _ = typed_collections(frames, "params.yaml")["toy_clips"]
    assert collection.format == "videolist" and collection.views == 0
    override_params(project / "params.yaml", {"frames": {"collections": {"toy_clips": {"format": "mp4"}}}})
    with pytest.raises(ConfigError, match=r"frames.collections.toy_clips.format = 'mp4': not a registered annotation"):
        typed_collections(read_section(FramesParams, project / "params.yaml", "frames"), "params.yaml")


def test_dvc_makes_the_entry_a_stage_of_its_own_through_the_unchanged_dvc_yaml(project):
    with Repo(project) as repo:
        stage = {stage.name: stage for stage in repo.index.stages}["frames@toy_clips"]
        assert {"toy/clips.csv", "data/sample/ego4d"} <= {dep.def_path for dep in stage.deps}
        assert [out.def_path for out in stage.outs] == ["data/frames/toy_clips"]


def test_the_frames_stage_decodes_the_new_collection(project):
    override_params(project / "params.yaml", {"tracking": {"enabled": False}})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project / "src"), str(project)])}
    command = [sys.executable, "-m", "stages.frames", "toy_clips"]
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(FrameShards(project / "data/frames/toy_clips").clip_ids) == 2
