"""The README's "Extending eva02at" checklists, followed on a temporary copy: an annotation format and a model
size, each added the way the checklist says and seen by the code that must see it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import open_clip
import open_clip.factory
import pytest

from eva02at.core.config import ConfigError, from_dict
from eva02at.data.annotations import FORMATS, Source
from eva02at.data.formats.registered import read_segments
from eva02at.models.sizes import check_frames_size, image_size, model_names
from stages.frames import typed_collection
from stages.image_clip import ImageClipParams
from tests.stage_deps import listed_code_deps
from tests.test_stage_deps import code_dep_problems

ROOT = Path(__file__).resolve().parents[1]
TOY_FORMAT = '''\
"""Toy annotation format: one video name per line, each video one clip of ``seconds``."""

from __future__ import annotations

from dataclasses import dataclass

from eva02at.core.config import PositiveFloat
from eva02at.data.annotations import FormatParams, Segment, Segments, Source, register_format, segments_of_rows

NAME = "toy_lines"


@dataclass(frozen=True)
class ToyParams(FormatParams):
    seconds: PositiveFloat = 1.0


@register_format(NAME, layout="{name}.mp4", params=ToyParams)
def read_toy(source: Source) -> Segments:
    def segment(line: int, row: dict[str, str]) -> Segment:
        return Segment(row["name"], source.pattern.format(**row), 0.0, source.options.seconds, line)

    return segments_of_rows(source, ("name",), segment)
'''


def project_copy(tmp_path: Path) -> Path:
    """The code and pipeline of the project, without data: what a contributor edits."""
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "stages", copy / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", copy / "dvc.yaml")
    return copy


def add_format_module(project: Path) -> Path:
    """Checklist steps 1-2: the module, and its name on the import line of ``formats/registered.py``."""
    formats = project / "src" / "eva02at" / "data" / "formats"
    (formats / "toy_lines.py").write_text(TOY_FORMAT)
    registered = formats / "registered.py"
    text = registered.read_text()
    registered.write_text(text.replace("import charades, egoclip,", "import charades, egoclip, toy_lines,"))
    return formats / "toy_lines.py"


def test_an_annotation_format_is_a_module_its_import_and_a_frames_dep(tmp_path, monkeypatch):
    project = project_copy(tmp_path)
    module = add_format_module(project)
    packages = {"eva02at": project / "src", "stages": project}
    # checklist step 3: the frames stage imports every format, so its code dep is the formats folder, which
    # covers the new module; `python -m tests.stage_deps --write` finds nothing to change
    assert "src/eva02at/data/formats" in listed_code_deps(project, packages)["frames"]
    assert code_dep_problems(project, packages) == {}

    spec = importlib.util.spec_from_file_location("toy_lines", module)  # the copy's module, registered here
    toy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "toy_lines", toy)
    try:
        spec.loader.exec_module(toy)
        (tmp_path / "list.csv").write_text("name\na\n\nb\n")
        segments, errors = read_segments("toy_lines", Source(str(tmp_path / "list.csv"), options=toy.ToyParams(2.5)))
        assert [(s.clip_id, s.video, s.end, s.line) for s in segments] == [
            ("a", "a.mp4", 2.5, 2),
            ("b", "b.mp4", 2.5, 4),
        ]
        assert errors == []
        entry = {"format": "toy_lines", "annotations": "list.csv", "videos": "videos", "num_frames": 4}
        where = "params.yaml: frames.collections.toy"
        collection, options = typed_collection(entry | {"seconds": 2.5}, where)
        assert (collection.format, options) == ("toy_lines", toy.ToyParams(2.5))
        with pytest.raises(ConfigError, match=r"frames.collections.toy.seconds = 0: Input should be greater than 0"):
            typed_collection(entry | {"seconds": 0}, where)
        with pytest.raises(ConfigError, match=r"frames.collections.toy.clip_seconds: unknown key; known keys are"):
            typed_collection(entry | {"clip_seconds": 2.0}, where)
    finally:
        FORMATS.pop("toy_lines", None)
    with pytest.raises(ConfigError, match=r"frames.collections.toy.format = 'toy_lines': not a registered"):
        typed_collection(entry, where)


def test_a_model_size_is_an_open_clip_config_and_the_frames_size_it_needs(tmp_path, monkeypatch):
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIG_PATHS", list(open_clip.factory._MODEL_CONFIG_PATHS))
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIGS", dict(open_clip.factory._MODEL_CONFIGS))
    config = json.loads((ROOT / "src/eva02at/models/configs/EVA02-Tiny-test.json").read_text())
    config["vision_cfg"]["image_size"] = 48
    (tmp_path / "EVA02-Toy-48.json").write_text(json.dumps(config))
    params = {"model": "EVA02-Toy-48", "frames": "data/frames/egoclip", "out": "m", "checkpoints": "c"}
    params |= {"train": {}, "optim": {}}
    with pytest.raises(ConfigError, match=r"image_clip.model = 'EVA02-Toy-48': not an EVA02-CLIP configuration"):
        from_dict(ImageClipParams, params, "params.yaml: image_clip")

    open_clip.add_model_config(tmp_path)  # what configs/ does for the tiny sizes
    assert "EVA02-Toy-48" in model_names() and image_size("EVA02-Toy-48") == 48
    assert from_dict(ImageClipParams, params, "params.yaml: image_clip").model == "EVA02-Toy-48"
    check_frames_size("EVA02-Toy-48", 48, "params.yaml")
    with pytest.raises(ConfigError, match=r"frames.size = 64 does not fit image_clip.model = 'EVA02-Toy-48', whose"):
        check_frames_size("EVA02-Toy-48", 64, "params.yaml")


def test_the_readme_lists_every_model_size_with_the_frames_size_its_config_gives():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| `image_clip.model` | `frames.size` |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip("|").split("|") for line in table.splitlines()]
    assert {name.strip(): int(size) for name, size in rows} == {name: image_size(name) for name in model_names()}
