"""``eva02at compare``: sorting and table layout, then runs logged to a real MLflow store."""

from __future__ import annotations

import math
import shutil

import pytest

from eva02at.cli.compare import build_table, select, sort_runs, varying
from eva02at.cli.main import main
from eva02at.core.text_table import format_table
from eva02at.core.tracking import RunRecord, Tracker
from tests.project_fixtures import empty_mlflow_store

METRIC = "finetuned.ek100_mir.mAP_avg"


def record(run_id: str, start: int, metrics=None, params=None, tags=None, name="finetune") -> RunRecord:
    return RunRecord(run_id, name, "FINISHED", start, params or {}, metrics or {}, tags or {})


def ids(runs: list[RunRecord]) -> list[str]:
    return [run.run_id for run in runs]


def test_sort_runs_best_first_missing_and_nan_last_ties_newest_first():
    runs = [
        record("old-high", 1, {METRIC: 0.5}),
        record("new-high", 2, {METRIC: 0.5}),
        record("low", 3, {METRIC: 0.1}),
        record("nan", 4, {METRIC: math.nan}),
        record("none", 5),
    ]
    assert ids(sort_runs(runs, METRIC)) == ["new-high", "old-high", "low", "none", "nan"]
    assert ids(sort_runs(runs, METRIC, ascending=True)) == ["low", "new-high", "old-high", "none", "nan"]
    assert ids(sort_runs(runs)) == ["none", "nan", "low", "new-high", "old-high"]


def test_select_by_stage_or_flow():
    runs = [
        record("a", 1, tags={"dvc.stage": "finetune"}),
        record("b", 2, tags={"prefect.flow": "retrain"}),
        record("c", 3),
    ]
    assert ids(select(runs, "retrain")) == ["b"]
    assert ids(select(runs, "finetune")) == ["a"]
    assert len(select(runs)) == 3


def test_varying_counts_absent_keys_as_different():
    assert varying([{"a": "1", "b": "2"}, {"a": "1", "b": "3"}, {"a": "1"}]) == ["b"]
    assert varying([{"a": "1", "c": "x"}, {"a": "1"}]) == ["c"]
    assert varying([]) == []


def test_build_and_format_table():
    runs = [
        record(
            "aaaaaaaaaa",
            0,
            {METRIC: 0.25, "loss": 1.5},
            {"optim.lr": "0.001", "train.epochs": "2"},
            {"dvc.stage": "finetune", "git.commit": "0123456789abcdef-dirty", "dvc.dep.data/x": "f" * 32},
        ),
        record(
            "bbbbbbbbbb",
            60_000,
            {METRIC: 0.5},
            {"optim.lr": "0.0001", "train.epochs": "2"},
            {"dvc.stage": "finetune", "git.commit": "fedcba9876543210", "dvc.dep.data/x": "e" * 32},
        ),
    ]
    table = build_table(runs, sort_metric=METRIC)
    assert table.columns == ["run", "name", "stage", "started (UTC)", "commit", METRIC, "loss", "optim.lr", "data/x"]
    assert table.rows[0] == [
        "aaaaaaaa",
        "finetune",
        "finetune",
        "1970-01-01 00:00",
        "0123456789-dirty",
        "0.25",
        "1.5",
        "0.001",
        "ffffffff",
    ]
    assert table.rows[1][3:8] == ["1970-01-01 00:01", "fedcba9876", "0.5", "-", "0.0001"]
    text = format_table(table).splitlines()
    assert len(text) == 4 and set(text[1]) == {"-", " "}
    starts = [text[0].index(column) for column in table.columns]
    for line, row in zip(text[2:], table.rows, strict=True):  # every cell starts under its header
        assert all(line[start:].startswith(cell) for start, cell in zip(starts, row, strict=True))
    chosen = build_table(runs, metrics=["loss"], params=["train.epochs"])
    assert chosen.columns[5:] == ["loss", "train.epochs", "data/x"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts the artifacts of new experiments under the working directory
    path = tmp_path / "mlflow.db"
    shutil.copy(empty_mlflow_store(), path)
    params = tmp_path / "params.yaml"
    params.write_text(f"tracking:\n  uri: sqlite:///{path}\n  experiment: cmp\n  enabled: true\n")
    return params


def log_run(params_file, stage: str, lr: float, value: float, frames_hash: str) -> str:
    tags = {"dvc.stage": stage, "git.commit": "a1b2c3d4e5f6", "dvc.dep.data/frames/ek100_train": frames_hash}
    uri = f"sqlite:///{params_file.parent / 'mlflow.db'}"
    with Tracker("cmp", stage, uri, tags=tags) as tracker:
        tracker.log_params({"optim": {"lr": lr}, "train": {"epochs": 2}})
        tracker.log_metrics({METRIC: value})
        return tracker.run_id


def rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()[2:]]


def test_compare_lists_mlflow_runs_in_metric_order(store, capsys):
    low = log_run(store, "finetune", 1e-3, 0.31, "1" * 32)
    high = log_run(store, "finetune", 1e-4, 0.42, "2" * 32)
    log_run(store, "evaluate", 1e-4, 0.99, "2" * 32)

    assert main(["compare", "--params-file", str(store), "--stage", "finetune", "--sort", METRIC]) == 0
    header, _, *lines = capsys.readouterr().out.splitlines()
    # "started (UTC)" is two words; train.epochs is the same in both runs, so it is no column
    assert header.split()[6:] == [METRIC, "optim.lr", "data/frames/ek100_train"]
    assert [line.split()[0] for line in lines] == [high[:8], low[:8]]
    assert [line.split()[-3:] for line in lines] == [["0.42", "0.0001", "22222222"], ["0.31", "0.001", "11111111"]]

    main(["compare", "--params-file", str(store), "--stage", "finetune", "--sort", METRIC, "--ascending"])
    assert [row[0] for row in rows(capsys.readouterr().out)] == [low[:8], high[:8]]
    main(["compare", "--params-file", str(store), "--sort", METRIC, "--limit", "1"])
    assert [row[2] for row in rows(capsys.readouterr().out)] == ["evaluate"]

    assert main(["compare", "--params-file", str(store), "--experiment", "absent"]) == 1
    assert "no MLflow experiment 'absent'" in capsys.readouterr().err
