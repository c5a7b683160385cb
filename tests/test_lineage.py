"""One helper opens every stage's MLflow run: lineage tags on the lead process only, nothing where tracking
is off, and the runs a killed execution left RUNNING ended first."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from stages.lineage import stage_run

PARAMS = "tracking:\n  experiment: lineage-test\n  uri: {uri}\n  enabled: {enabled}\n"


def params_file(tmp_path, enabled: bool = True) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.format(uri=uri, enabled=str(enabled).lower()))
    return str(path), uri


def test_a_stage_run_carries_its_lineage_and_execution_tags(tmp_path):
    params, uri = params_file(tmp_path)
    lineage = {"dvc.stage": "evaluate", "git.commit": "abc", "dvc.dep.data/x": "f" * 32}
    with stage_run("evaluate", params, tags={"extra": "1"}, execution={"host": "h"}, lineage=lineage) as tracker:
        run_id = tracker.run_id
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert {k: tags[k] for k in [*lineage, "extra", "host"]} == {**lineage, "extra": "1", "host": "h"}


def test_no_run_off_the_lead_process_or_with_tracking_off(tmp_path):
    params, uri = params_file(tmp_path)
    with stage_run("export", params, lead=False, lineage={}) as tracker:
        assert tracker.run_id is None
    (tmp_path / "off").mkdir()
    off, _ = params_file(tmp_path / "off", enabled=False)
    with stage_run("export", off, lineage={}) as tracker:
        assert tracker.run_id is None
    assert MlflowClient(uri).search_experiments(filter_string="name = 'lineage-test'") == []


def test_runs_of_a_killed_execution_end_killed_before_the_new_one(tmp_path):
    params, uri = params_file(tmp_path)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("lineage-test")
    mine = client.create_run(experiment, tags={"dvc.stage": "frames@a", "frames.host": "h"}).info.run_id
    other = client.create_run(experiment, tags={"dvc.stage": "frames@b", "frames.host": "h"}).info.run_id
    execution = {"dvc.stage": "frames@a", "frames.host": "h"}
    with stage_run("frames@a", params, execution=execution, lineage={}) as tracker:
        assert client.get_run(mine).info.status == "KILLED"
        assert client.get_run(other).info.status == "RUNNING"
        assert client.get_run(tracker.run_id).info.status == "RUNNING"
