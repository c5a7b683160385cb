"""An expected failure (a PipelineError) ends a stage or command with one clear line and exit status 1 (2 for
params that do not fit); anything else (a CUDA out-of-memory, a shape error, a bug) keeps its full traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from eva02at.cli import main as cli
from eva02at.core.config import read_params
from stages.common import EXIT_PARAMS

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def write_params(path: Path, **sections: dict) -> Path:
    """The project's params with some sections replaced."""
    with path.open("w") as handle:
        YAML(typ="safe").dump({**read_params(ROOT / "params.yaml"), **sections}, handle)
    return path


def python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True)


def test_a_bad_param_ends_the_stage_with_one_line_and_the_params_exit_status(tmp_path):
    params = read_params(ROOT / "params.yaml")
    finetune = {**params["finetune"], "optim": {**params["finetune"]["optim"], "lr": "1e-4"}}
    write_params(tmp_path / "params.yaml", finetune=finetune)

    result = python("-m", "stages.finetune", "--params", "params.yaml", cwd=tmp_path)

    assert result.returncode == EXIT_PARAMS == 2  # a flow does not retry it
    assert result.stderr.splitlines() == [
        "ERROR __main__: params.yaml: finetune.optim.lr = '1e-4': Input should be a valid number"
    ]


def ek100_soft_labels() -> dict:
    """The project's soft_labels section with its EK100 splits alone (the dumped params sort the splits)."""
    section = read_params(ROOT / "params.yaml")["soft_labels"]
    splits = {name: split for name, split in section["splits"].items() if split.get("format", "ek100") == "ek100"}
    return {**section, "splits": splits}


def test_a_missing_input_file_outside_dvc_is_one_line_naming_it(tmp_path):
    soft_labels = ek100_soft_labels()
    missing = tmp_path / "absent" / "EPIC_100_retrieval_test.csv"  # the first file the stage reads
    splits = {**soft_labels["splits"], "ek100_test": {**soft_labels["splits"]["ek100_test"], "videos": str(missing)}}
    write_params(tmp_path / "params.yaml", soft_labels={**soft_labels, "splits": splits})

    result = python("-m", "stages.soft_labels", "--params", "params.yaml", cwd=tmp_path)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("ERROR")] == [
        f"ERROR __main__: {missing}: no such file; check its path in the params file, or run the stage through "
        "`dvc repro`, which first runs the stage that makes it"
    ]


INJECTED = """
import sys
import stages.soft_labels as stage

def out_of_memory(*args, **kwargs):
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

stage.build_relevancy = out_of_memory
sys.argv = ["soft_labels", "--params", "params.yaml"]
stage.main()
"""


def test_an_unexpected_error_in_a_stage_keeps_its_traceback(tmp_path):
    write_params(tmp_path / "params.yaml", soft_labels=ek100_soft_labels())

    result = python("-c", INJECTED, cwd=tmp_path)

    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert 'stages/soft_labels.py", line' in result.stderr and "in out_of_memory" in result.stderr
    assert result.stderr.rstrip().endswith("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not (tmp_path / "data" / "labels").exists()


def test_an_expected_failure_of_a_command_is_one_line(tmp_path, capsys):
    status = cli.main(["compare", "--limit", "0", "--params-file", str(tmp_path / "none.yaml")])
    assert status == 1
    assert capsys.readouterr().err == "eva02at compare: --limit must be at least 1, got 0\n"


def test_an_unexpected_error_of_a_command_propagates(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("NCCL error: unhandled system error")

    monkeypatch.setattr(cli, "find_runs", broken)
    with pytest.raises(RuntimeError, match="NCCL error"):
        cli.main(["compare", "--params-file", str(ROOT / "params.yaml")])
