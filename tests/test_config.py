"""Params are read as DVC reads them and checked against the stages' schema before any work: a bad value
stops its stage with one line that names the key path, the value and what is allowed."""

from __future__ import annotations

import copy
import datetime
import importlib
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dvc.utils.serialize import load_yaml
from ruamel.yaml import YAML

from eva02at.core.config import ConfigError, from_dict, read_params
from eva02at.core.tracking import TrackingParams
from eva02at.data.formats.videolist import VideoListParams
from eva02at.data.synthetic import SampleParams
from eva02at.evaluation.benchmarks.frozen import BenchmarkSuiteParams, typed_entries
from eva02at.models.config import VideoCLIPConfig
from stages.common import EXIT_PARAMS
from stages.evaluate import EvaluateParams
from stages.export import ExportParams
from stages.finetune import FinetuneParams
from stages.frames import FramesParams, typed_collections
from stages.image_clip import ImageClipParams
from stages.pretrain import PretrainParams
from stages.soft_labels import SoftLabelParams

ROOT = Path(__file__).resolve().parents[1]
PARAMS = read_params(ROOT / "params.yaml")
SCHEMAS = {
    "sample": SampleParams,
    "frames": FramesParams,
    "soft_labels": SoftLabelParams,
    "image_clip": ImageClipParams,
    "pretrain": PretrainParams,
    "finetune": FinetuneParams,
    "finetune_charades": FinetuneParams,  # the finetune stage's schema, run with this section
    "benchmarks": BenchmarkSuiteParams,
    "export": ExportParams,
    "evaluate": EvaluateParams,
    "tracking": TrackingParams,
}
ARGUMENTS = {"frames": ["egoclip"], "benchmark": ["egomcq"]}  # the stages' positional arguments
DROP = object()  # the key is removed

# (stage whose entry point runs, key path, bad value, what is allowed): the stage's one line must read
# "<params file>: <key path> = <value>: <what is allowed>"
BAD_VALUES = [
    ("sample", "sample.seed", -1, "Input should be greater than or equal to 0"),
    ("sample", "sample.workers", "2", "Input should be a valid integer"),
    ("frames", "frames.size", -5, "Input should be greater than 0"),
    (
        "image_clip",
        "image_clip.model",
        "EVA02-B-61",
        "not an EVA02-CLIP configuration of open_clip; known: ['EVA02-B-16'",
    ),
    ("frames", "frames.jpeg_quality", 101, "Input should be less than or equal to 100"),
    ("frames", "frames.max_failure_fraction", 1.5, "Input should be less than or equal to 1"),
    ("frames", "frames.collections.egoclip.format", "mp4", "not a registered annotation format; known: ['charades'"),
    ("frames", "frames.collections.egoclip.num_frames", 4.0, "Input should be a valid integer"),
    ("frames", "frames.collections.ek100_test", "ek100", "Input should be an object"),
    ("soft_labels", "soft_labels.splits.ek100_train.videos", 3, "Input should be a valid string"),
    ("image_clip", "image_clip.optim.lr", "1e-4", "Input should be a valid number"),
    ("image_clip", "image_clip.train.compile", 1, "Input should be a valid boolean"),
    ("image_clip", "image_clip.temperature", 0, "Input should be greater than 0"),
    ("pretrain", "pretrain.optim.lr", 0, "Input should be greater than 0"),
    ("pretrain", "pretrain.optim.betas", "abc", "Input should be a valid array"),
    ("pretrain", "pretrain.train.batch_size", 0, "Input should be greater than 0"),
    ("pretrain", "pretrain.train.precision", "fp16", "Input should be 'auto', 'fp32' or 'bf16'"),
    ("finetune", "finetune.optim.schedule", "linear", "Input should be 'constant' or 'cosine'"),
    ("finetune", "finetune.optim.lr", float("nan"), "Input should be a finite number"),
    ("finetune", "finetune.train.epochs", True, "Input should be a valid integer"),
    ("finetune", "finetune.loss", "triplet", "not a registered loss; known: ['adaptive_mi_mm', 'mi_mm', 'sms']"),
    ("finetune", "finetune.losses.mi_mm.margin", "0.2", "Input should be a valid number"),
    ("finetune", "finetune.relevance_threshold", 1.1, "Input should be less than or equal to 1"),
    ("finetune", "finetune.compatibility_weight", 0, "Input should be greater than 0"),
    ("finetune", "finetune.compatible_with", 3, "Input should be a valid string"),
    ("benchmark", "benchmarks.entries.egomcq.collection", 3, "Input should be a valid string"),
    ("benchmark", "benchmarks.out", None, "Input should be a valid string"),
    ("export", "benchmarks.entries.ek100_mir.truth", ["a.npz"], "Input should be a valid string"),
    ("export", "export.collections", "ego4d_clips", "Input should be a valid array"),
    ("export", "export.models.finetuned", 1, "Input should be a valid string"),
    ("export", "export.device", "gpu", "String should match pattern"),
    ("export", "export.batch_size", 0, "Input should be greater than 0"),
    ("export", "export.out", datetime.date(2024, 1, 1), "a YAML date, not a params value (quote it)"),
    ("evaluate", "evaluate.models", [], "List should have at least 1 item"),
    ("evaluate", "evaluate.random.draws", 0, "Input should be greater than 0"),
    ("evaluate", "evaluate.histories.finetune", None, "Input should be a valid string"),
    ("evaluate", "tracking.enabled", "yes", "Input should be a valid boolean"),
    ("evaluate", "tracking.experiment", 7, "Input should be a valid string"),
]
# (stage, key path, value or DROP, how the line reads after the file name): keys that should not be there or
# are missing, and values that only conflict with another key (reported at the section holding both)
BAD_KEYS = [
    ("sample", "sample.colour", 1, "sample.colour: unknown key; known keys are ['charades_actions', "),
    ("soft_labels", "soft_labels.splits.ek100_test.sentence", "x.csv", "soft_labels.splits.ek100_test.sentence: "),
    ("finetune", "finetune.losses.sms.margn", 0.6, "finetune.losses.sms.margn: unknown key; known keys are ['lam', "),
    ("finetune", "finetune.losses.triplet", {}, "finetune.losses.triplet: unknown key; known keys are ['adap"),
    ("pretrain", "pretrain.init", DROP, "pretrain.init: missing (required)"),
    ("finetune", "finetune.optim", DROP, "finetune.optim: missing section (required: write it out"),
    ("finetune", "finetune.train", DROP, "finetune.train: missing section (required: write it out"),
    ("finetune", "finetune.losses", DROP, "finetune.losses: missing section (required: write it out"),
    ("image_clip", "image_clip.train", DROP, "image_clip.train: missing section (required: write it out"),
    ("image_clip", "frames.size", 224, "frames.size = 224 does not fit image_clip.model = 'EVA02-Tiny-16', whose"),
    ("pretrain", "pretrain.optim", DROP, "pretrain.optim: missing section (required: write it out"),
    ("export", "export.codes", DROP, "export.codes: missing section (required: write it out"),
    ("evaluate", "evaluate.random", DROP, "evaluate.random: missing section (required: write it out"),
    ("evaluate", "tracking", DROP, "no 'tracking' section (required: experiment, uri and enabled)"),
    ("evaluate", "tracking.uri", DROP, "tracking.uri: missing (required)"),
    ("evaluate", "tracking.enabled", DROP, "tracking.enabled: missing (required)"),
    ("finetune", "finetune.optim.betas", [0.9, 1.5], "finetune.optim.betas.1 = 1.5: Input should be less than 1"),
    ("sample", "sample.segment_seconds", [2.5, 1.5], "sample: sample.segment_seconds: expected [low, high] with"),
    ("benchmark", "benchmarks.entries.egomcq.queries", DROP, "benchmarks.entries.egomcq.queries: missing (required)"),
    ("export", "benchmarks.entries.egomcq.answers", "a.json", "benchmarks.entries.egomcq.answers: unknown key; known"),
    ("evaluate", "benchmarks.entries.mcq", {}, "benchmarks.entries.mcq: no benchmark module registers 'mcq'; known"),
    ("evaluate", "evaluate.grid.benchmark", "egomcq", "evaluate.grid.benchmark = 'egomcq': not a benchmark with"),
    ("evaluate", "evaluate.grid.model", "other", "evaluate: grid.model 'other' is not one of models"),
    ("evaluate", "evaluate.compatibility", {"old": "finetuned"}, "evaluate.compatibility: old and new are both"),
    ("evaluate", "evaluate.compatibility", {"old": "zero_shot", "benchmark": "mir"}, "evaluate.compatibility.bench"),
]


def with_value(params: dict, path: str, value: Any) -> dict:
    params = copy.deepcopy(params)
    *parents, key = path.split(".")
    section = params
    for name in parents:
        section = section[name]
    if value is DROP:
        del section[key]
    else:
        section[key] = value
    return params


def run_stage(stage: str, params: dict, tmp_path: Path, monkeypatch, caplog) -> tuple[int, list[str]]:
    """Run the stage's entry point on ``params``; its exit status and error lines."""
    path = tmp_path / "params.yaml"
    with path.open("w") as handle:
        YAML(typ="safe").dump(params, handle)
    monkeypatch.setattr(sys, "argv", [stage, *ARGUMENTS.get(stage, []), "--params", str(path)])
    main = importlib.import_module(f"stages.{stage}").main
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
        main()
    return stopped.value.code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("stage,path,value,allowed", BAD_VALUES, ids=[f"{r[1]}={r[2]!r}" for r in BAD_VALUES])
def test_a_bad_value_stops_its_stage_with_one_line_naming_key_and_value(
    stage, path, value, allowed, tmp_path, monkeypatch, caplog
):
    status, errors = run_stage(stage, with_value(PARAMS, path, value), tmp_path, monkeypatch, caplog)
    assert status == EXIT_PARAMS
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith(f"{tmp_path / 'params.yaml'}: {path} = {value!r}: {allowed}")


@pytest.mark.parametrize("stage,path,value,expected", BAD_KEYS, ids=[r[1] for r in BAD_KEYS])
def test_a_bad_key_stops_its_stage_with_one_line_naming_it(stage, path, value, expected, tmp_path, monkeypatch, caplog):
    status, errors = run_stage(stage, with_value(PARAMS, path, value), tmp_path, monkeypatch, caplog)
    assert status == EXIT_PARAMS
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith(f"{tmp_path / 'params.yaml'}: {expected}")


def test_every_section_of_the_projects_params_fits_its_schema():
    built = {section: from_dict(schema, PARAMS[section], section) for section, schema in SCHEMAS.items()}
    assert built["finetune"].optim.betas == (0.9, 0.999)  # a default tuple
    assert built["image_clip"].optim.betas == (0.9, 0.98)  # a YAML list fills the tuple
    assert isinstance(built["pretrain"].optim.lr, float) and built["pretrain"].optim.lr == 3.0e-4
    collections = typed_collections(built["frames"], "params.yaml")  # each entry: common keys and its format's
    assert collections["ek100_train"][0].views == 2 and collections["ego4d_clips"][1] == VideoListParams(2.0)
    assert built["soft_labels"].splits["ek100_test"].videos.endswith("EPIC_100_retrieval_test.csv")
    assert built["export"].collections == ["ego4d_clips"]
    entries = typed_entries(built["benchmarks"], "params.yaml")  # each entry against its benchmark's params
    assert entries["ek100_mir"].truth.endswith("ek100_test.npz") and entries["egomcq"].collection == "egomcq"
    assert built["finetune"].losses.sms == {"margin": 0.6, "threshold": 0.1, "lam": pytest.approx(1.1 / 240)}
    assert built["finetune_charades"].losses.sms == {"margin": 0.3} and built["finetune_charades"].optim.name == "lamb"
    assert built["finetune_charades"].losses.mi_mm == {}  # a loss left out keeps its defaults
    assert built["soft_labels"].splits["charades_ego_train"].format == "charades"


def test_a_section_indented_under_another_is_refused_not_replaced_by_defaults():
    section = copy.deepcopy(PARAMS["finetune"])
    section["train"]["optim"] = section.pop("optim")  # optim indented one level too deep
    with pytest.raises(ConfigError, match=r"^finetune\.optim: missing section") as err:
        from_dict(FinetuneParams, section, "finetune")
    assert "\n" not in str(err.value)


def test_every_problem_of_a_section_is_reported_in_one_line():
    bad = with_value(with_value(PARAMS["finetune"], "optim.lr", "1e-4"), "train.batch_size", 0)
    with pytest.raises(ConfigError) as err:
        from_dict(FinetuneParams, bad, "finetune")
    assert str(err.value) == (
        "finetune.train.batch_size = 0: Input should be greater than 0; "
        "finetune.optim.lr = '1e-4': Input should be a valid number"
    )


def test_a_checkpoints_model_config_still_round_trips():
    config = VideoCLIPConfig("EVA02-Tiny-test", num_frames=8, open_clip_cfg={"embed_dim": 64, "vision_cfg": {}})
    assert VideoCLIPConfig.from_dict(config.to_dict()) == config
    with pytest.raises(
        ConfigError, match=r"^ckpt: config: num_frames, embed_dim, reference_frames must be >= 1, got 0, 256, 8$"
    ):
        VideoCLIPConfig.from_dict({**config.to_dict(), "num_frames": 0}, "ckpt: config")


TRICKY_YAML = """\
float_exponent: 1.0e6
bare_exponent: 1e-4
yes_word: yes
no_word: no
on_word: on
octal: 0o17
leading_zero: 017
sexagesimal: 12:30
null_tilde: ~
infinity: .inf
underscored: 1_000
quoted: '1e-4'
nested: {list: [1, 2.5, 'x', true]}
"""


def test_params_are_read_with_yaml_1_2_exactly_as_dvc_reads_them(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(TRICKY_YAML)
    ours = read_params(path)
    assert ours == load_yaml(path)  # DVC's own loader
    assert ours["float_exponent"] == 1.0e6 and ours["bare_exponent"] == 1e-4  # numbers, not strings (YAML 1.1)
    assert ours["yes_word"] == "yes" and ours["on_word"] == "on" and ours["sexagesimal"] == "12:30"
    assert (ours["octal"], ours["leading_zero"]) == (15, 17)


@pytest.mark.parametrize(
    "text,message",
    [
        ("a: [1\n", "not valid YAML"),
        ("a: 1\na: 2\n", "not valid YAML"),  # a duplicated key, as DVC refuses it
        ("- a\n", "expected sections (a mapping), got a list"),
    ],
)
def test_an_unreadable_params_file_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_params(path)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


LOCKED_PARAMS = """\
tricky:
  float_exponent: 1.0e6
  bare_exponent: 1e-4
  yes_word: yes
  off_word: off
  octal: 0o17
  leading_zero: 017
  null_tilde: ~
  quoted_date: '2024-01-01'  # unquoted, a date: DVC refuses it, as from_dict does
  sexagesimal: 12:30
  nested: {list: [1, 2.5, 'x', true, null]}
"""
DUMP_STAGE = """\
import pickle
from eva02at.core.config import read_params

with open("used.pkl", "wb") as out:
    pickle.dump(read_params("params.yaml")["tricky"], out)
"""


def typed(value: Any) -> Any:
    """``value`` with the type of every leaf made explicit: 1, 1.0 and True are then different."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


@pytest.mark.slow
def test_the_params_dvc_records_are_the_params_the_stage_used(tmp_path):
    (tmp_path / "params.yaml").write_text(LOCKED_PARAMS)
    (tmp_path / "dump.py").write_text(DUMP_STAGE)
    (tmp_path / "dvc.yaml").write_text(
        f"stages:\n  dump:\n    cmd: {sys.executable} dump.py\n    deps: [dump.py]\n"
        "    params: [tricky]\n    outs: [used.pkl]\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    for command in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        [sys.executable, "-m", "dvc", "repro", "-q"],
    ):
        subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True)

    locked = read_params(tmp_path / "dvc.lock")["stages"]["dump"]["params"]["params.yaml"]["tricky"]
    used = pickle.loads((tmp_path / "used.pkl").read_bytes())
    assert typed(locked) == typed(used)
    assert used["float_exponent"] == 1.0e6 and used["yes_word"] == "yes" and used["quoted_date"] == "2024-01-01"
