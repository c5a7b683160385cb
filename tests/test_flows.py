"""The flows under Prefect's test harness, on a tiny copy of the project with real DVC, git and MLflow.

The tests that start the harness's server and run DVC on the tiny project are marked slow; the pieces
the flows are built from (stage order, metrics, decisions, what DVC did with a stage) are not."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dvc.repo import Repo
from dvc.utils.hydra import apply_overrides
from prefect.testing.utilities import prefect_test_harness

from eva02at.core.config import read_params
from eva02at.core.tracking import aliased_version, find_runs, get_run
from flows.common import CommandError, order_stages, parse_metrics_show, stop_group
from flows.reproduce import reproduce, reproduce_single
from flows.retrain import Compatibility, champion_overrides, compatibility, decide, override_value, retrain
from tests.processes import alive, children, wait_until
from tests.project_fixtures import (
    CANDIDATE_METRIC,
    CANDIDATE_MODEL,
    CANDIDATE_PARAM,
    CANDIDATE_STAGE,
    candidate_model_bytes,
    empty_mlflow_store,
    git,
    make_tiny_project,
    md5,
    quiet_env,
)

MODEL_NAME = "tiny-candidate"


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """One Prefect test server for the module, its state in a temporary PREFECT_HOME; yields an empty
    MLflow store, built while the server starts."""
    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(1) as pool:
        env = quiet_env(tmp_path_factory.mktemp("prefect-home"))
        for key in set(os.environ) - set(env):
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        store = pool.submit(empty_mlflow_store)
        with prefect_test_harness(server_startup_timeout=600):  # Prefect counts only its polling sleeps
            yield store.result()


@pytest.fixture
def project(harness, tmp_path, monkeypatch):
    """A committed tiny project as the working directory, with an empty MLflow store. Its URI is absolute:
    MLflow keeps one database engine per URI for the process, so a relative one would reach an earlier test's."""
    project = make_tiny_project(tmp_path / "project")
    shutil.copy(harness, project / "mlflow.db")
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    return project


def dvc_status(*stages: str) -> dict:
    out = subprocess.run(["dvc", "status", "--json", *stages], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


# --- pure pieces ---------------------------------------------------------------------------------------


def test_order_stages_puts_dependencies_first_and_keeps_file_order():
    stages = ["train", "sample", "frames@a", "frames@b", "labels", "report"]
    edges = [
        ("frames@a", "sample"),
        ("frames@b", "sample"),
        ("labels", "sample"),
        ("train", "frames@a"),
        ("train", "labels"),
    ]
    ordered = order_stages(stages, edges)
    assert sorted(ordered) == sorted(stages)
    for stage, dependency in edges:
        assert ordered.index(dependency) < ordered.index(stage)
    # only "train" had to move: it comes right after its last dependency, the rest keep dvc.yaml's order
    assert ordered == ["sample", "frames@a", "frames@b", "labels", "train", "report"]
    assert order_stages(stages, edges, ["train"]) == ["sample", "frames@a", "labels", "train"]
    assert order_stages(stages, edges, ["frames"]) == ["sample", "frames@a", "frames@b"]
    with pytest.raises(ValueError, match="no DVC stage 'evaluate'"):
        order_stages(stages, edges, ["evaluate"])


def test_parse_metrics_show_names_numbers_and_reports_problems():
    shown = {
        "": {
            "data": {
                "metrics/eval.json": {"data": {"finetuned": {"ek100_mir": {"mAP_avg": 0.25, "n": 3}}, "ok": True}},
                "metrics/zs.json": {"data": {"zeroshot": {"note": "text", "nDCG": 1}}},
                "metrics/missing.json": {"error": {"type": "FileNotFoundError", "msg": "not written yet"}},
            }
        }
    }
    metrics, problems = parse_metrics_show(shown)
    assert metrics == {"finetuned.ek100_mir.mAP_avg": 0.25, "finetuned.ek100_mir.n": 3.0, "zeroshot.nDCG": 1.0}
    assert problems == ["metrics/missing.json: not written yet"]
    clash = {"": {"data": {"a.json": {"data": {"m": 1}}, "b.json": {"data": {"m": 2}}}}}
    with pytest.raises(ValueError, match=r"'m' is in both a\.json and b\.json"):
        parse_metrics_show(clash)
    assert parse_metrics_show({}) == ({}, [])


# a command that starts a process which ignores SIGTERM, then waits
STUBBORN = """
import subprocess, sys, time
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", code])
time.sleep(600)
"""


def test_stop_group_ends_the_whole_group_of_a_command():
    command = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True, process_group=0)
    with command:
        assert command.stdout.readline() == "ready\n"  # the child's, on the pipe it inherited
        (child,) = children(command.pid)
        stop_group(command, grace_s=1)
    assert command.returncode == -signal.SIGTERM  # the command itself stops when told to
    wait_until(lambda: not alive(child), "the child that ignores SIGTERM to be killed after the grace")


COPY_STAGE = """\
stages:
  copy:
    cmd: {python} -c "import shutil; shutil.copy('in.txt', 'out.txt')"
    deps: [in.txt]
    outs: [out.txt]
"""


def test_reproduce_single_says_what_dvc_did(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text(COPY_STAGE.format(python=sys.executable))
    (tmp_path / "in.txt").write_text("a")
    (tmp_path / "raw.txt").write_text("raw")
    with Repo.init(no_scm=True) as repo:
        repo.add("raw.txt")

    def repro(target: str) -> str:
        def bring_up_to_date() -> None:
            with Repo(".") as repo:
                repo.reproduce(target, single_item=True)

        return reproduce_single(target, bring_up_to_date)

    assert repro("copy") == "ran" and (tmp_path / "out.txt").read_text() == "a"
    assert repro("copy") == "unchanged"
    (tmp_path / "in.txt").write_text("b")
    assert repro("copy") == "ran" and (tmp_path / "out.txt").read_text() == "b"
    (tmp_path / "in.txt").write_text("a")  # inputs the run cache has seen
    assert repro("copy") == "restored" and (tmp_path / "out.txt").read_text() == "a"
    (tmp_path / "out.txt").unlink()  # an output lost: checked out again as dvc.lock records it
    assert repro("copy") == "restored" and (tmp_path / "out.txt").read_text() == "a"
    (tmp_path / "raw.txt").write_text("edited")
    assert repro("raw.txt.dvc") == "updated"
    assert repro("raw.txt.dvc") == "unchanged"


def test_decide(tmp_path):
    model = tmp_path / "model.pt"
    assert not decide("m", 0.9, model, None, None).register  # no model file
    model.write_bytes(b"w")
    assert not decide("m", None, model, None, None).register
    assert not decide("m", math.nan, model, 1, 0.1).register
    assert decide("m", 0.2, model, None, None).register  # first model
    assert decide("m", 0.2, model, 3, None).register  # champion lacks the metric
    assert decide("m", 0.2, model, 3, 0.1).register
    kept = decide("m", 0.1, model, 3, 0.1)  # a tie keeps the champion
    assert not kept.register and "does not beat champion v3" in kept.reason


def test_decide_with_the_compatibility_requirement(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"w")
    yes, no = Compatibility(True, "cross-model 0.5 >= ..."), Compatibility(False, "cross-model 0.3 < ...")
    assert decide("m", 0.2, model, 3, 0.1, no).register  # not required: the metric alone decides
    refused = decide("m", 0.2, model, 3, 0.1, no, require_compatible=True)
    assert not refused.register
    assert refused.reason == "not compatible with champion v3, which promotion requires: cross-model 0.3 < ..."
    assert not decide("m", 0.2, model, 3, 0.1, Compatibility(None, "not measured"), True).register
    assert not decide("m", 0.2, model, 3, 0.1, None, True).register
    assert decide("m", 0.2, model, 3, 0.1, yes, True).register
    assert not decide("m", 0.1, model, 3, 0.1, yes, True).register  # compatible, but not better
    assert decide("m", 0.2, model, None, None, None, True).register  # the first model has nothing to match


def test_compatibility_is_read_from_the_evaluations_criterion():
    criterion = {"old_old": 0.4, "new_new": 0.5, "new_text_old_video": 0.45, "old_text_new_video": 0.41}
    metrics = {f"compatibility.criterion.{k}": v for k, v in criterion.items()} | {"finetuned.x.mAP": 0.5}
    found = compatibility({**metrics, "compatibility.criterion.compatible": 1.0}, 3)
    assert (found.compatible, found.tag) == (True, "yes")
    assert found.reason == "cross-model 0.41 >= champion v3's own 0.4 (candidate's own 0.5)"
    metrics["compatibility.criterion.old_text_new_video"] = 0.39
    found = compatibility({**metrics, "compatibility.criterion.compatible": 0.0}, 3)
    assert (found.compatible, found.tag, found.reason[:24]) == (False, "no", "cross-model 0.39 < champ")
    assert compatibility({"finetuned.x.mAP": 0.5}, 3).tag == "unknown"
    assert compatibility(metrics, None) == Compatibility(None, "no champion to be compatible with")


def test_champion_overrides_are_read_by_dvc_as_meant(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "export:\n  models: {finetuned: f.pt}\nevaluate:\n  models: [finetuned]\n  compatibility: null\n"
        "finetune:\n  compatible_with: null\n  compatibility_init: as_is\n  compatibility_form: cross\n  lr: 0.1\n"
    )
    overrides = champion_overrides(Path("models/registry/m/v3/model.pt"), train_compatible=True)
    overrides |= {"evaluate.models": ["finetuned", "zero_shot"], "finetune.lr": 1e-4}
    apply_overrides(str(params), [f"{key}={override_value(value)}" for key, value in overrides.items()])  # DVC's -S
    assert read_params(params) == {
        "export": {"models": {"finetuned": "f.pt", "champion": "models/registry/m/v3/model.pt"}},
        "evaluate": {"models": ["finetuned", "zero_shot"], "compatibility": {"old": "champion", "new": "finetuned"}},
        "finetune": {
            "compatible_with": "models/registry/m/v3/model.pt",
            "compatibility_init": "procrustes",
            "compatibility_form": "cross_align",
            "lr": 1e-4,
        },
    }
    assert "finetune.compatible_with" not in champion_overrides(Path("c.pt"), train_compatible=False)


# --- reproduce -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reproduce_runs_then_skips_or_restores(project):
    first = reproduce(targets=["soft_labels"], retries=0)
    assert [(s["stage"], s["outcome"]) for s in first["stages"]] == [("sample", "ran"), ("soft_labels", "ran")]
    assert (project / "data" / "labels" / "summary.json").is_file()
    assert dvc_status("sample", "soft_labels") == {}  # DVC agrees both are up to date

    shutil.rmtree(project / "data" / "labels")
    again = reproduce(targets=["soft_labels"], retries=0)
    assert [s["outcome"] for s in again["stages"]] == ["unchanged", "restored"]
    assert (project / "data" / "labels" / "summary.json").is_file()

    runs = [r for r in find_runs("eva02at") if r.name == "reproduce"]  # newest first
    assert [r.params["stages.ran"] for r in runs] == ["", "sample,soft_labels"]
    assert runs[0].params["stages.unchanged"] == "sample" and runs[0].params["stages.restored"] == "soft_labels"
    assert runs[0].tags["reproduce.status"] == "completed"


FLAKY = """\
stages:
  flaky:
    cmd: python flaky.py
    deps: [flaky.py]
    outs: [done.txt]
"""
# counts its attempts in a file outside the project and fails the first one, as a transient failure would
FLAKY_SCRIPT = """\
from pathlib import Path

attempts = Path("{counter}")
count = int(attempts.read_text()) + 1 if attempts.exists() else 1
attempts.write_text(str(count))
if count == 1:
    raise SystemExit("transient failure")
Path("done.txt").write_text("ok")
"""


@pytest.mark.slow
def test_reproduce_retries_a_failed_stage_and_reports_failure(project, tmp_path):
    counter = tmp_path / "attempts.txt"
    (project / "flaky").mkdir()
    (project / "flaky" / "dvc.yaml").write_text(FLAKY)
    (project / "flaky" / "flaky.py").write_text(FLAKY_SCRIPT.format(counter=counter))

    with pytest.raises(CommandError, match="transient failure"):
        reproduce(targets=["flaky/dvc.yaml:flaky"], retries=0)
    failed = next(r for r in find_runs("eva02at") if r.name == "reproduce")
    assert failed.tags["reproduce.status"] == "failed" and failed.params["stages.failed"] == "flaky/dvc.yaml:flaky"

    counter.unlink()
    summary = reproduce(targets=["flaky/dvc.yaml:flaky"], retries=1, retry_delay_s=0)
    assert counter.read_text() == "2"
    assert [(s["stage"], s["outcome"]) for s in summary["stages"]] == [("flaky/dvc.yaml:flaky", "ran")]
    assert (project / "flaky" / "done.txt").read_text() == "ok"


@pytest.mark.slow
def test_reproduce_does_not_retry_a_stage_whose_params_do_not_fit(project, tmp_path):
    counter = tmp_path / "attempts.txt"
    (project / "flaky").mkdir()
    (project / "flaky" / "dvc.yaml").write_text(FLAKY)
    script = FLAKY_SCRIPT.format(counter=counter).replace(
        'raise SystemExit("transient failure")', "raise SystemExit(2)"
    )
    (project / "flaky" / "flaky.py").write_text(script)  # exits as a stage with params that do not fit
    with pytest.raises(CommandError, match="exited with 2"):
        reproduce(targets=["flaky/dvc.yaml:flaky"], retries=2, retry_delay_s=0)
    assert counter.read_text() == "1"  # one attempt: a retry could only fail again


# a process that opens an MLflow run as a stage does, says its id and waits
TRACKED = """
import sys, threading
from eva02at.core.tracking import Tracker
print(Tracker("eva02at", sys.argv[1]).run_id, flush=True)
threading.Event().wait()
"""


def tracked_process(run_name: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-c", TRACKED, run_name], stdout=subprocess.PIPE, text=True)
    run_id = process.stdout.readline().strip()  # an empty line: it exited first
    assert run_id, f"the tracked process exited with status {process.wait()}"
    return process, run_id


@pytest.mark.slow
def test_reproduce_ends_the_run_of_a_killed_stage_that_dvc_does_not_execute_again(project):
    assert [s["outcome"] for s in reproduce(targets=[CANDIDATE_STAGE], retries=0, track=False)["stages"]] == ["ran"]
    alive, alive_run = tracked_process(CANDIDATE_STAGE)
    killed, killed_run = tracked_process(CANDIDATE_STAGE)
    killed.kill()  # as kill -9: its run stays RUNNING
    killed.wait()
    try:
        summary = reproduce(targets=[CANDIDATE_STAGE], retries=0, track=False)
        assert [s["outcome"] for s in summary["stages"]] == ["unchanged"]  # the stage itself does not run
        assert get_run(alive_run).status == "RUNNING"
    finally:
        alive.kill()
        alive.wait()
    ended = get_run(killed_run)
    assert ended.status == "KILLED"
    assert ended.tags["end.reason"].startswith(f"process {killed.pid} on ")


# --- retrain -------------------------------------------------------------------------------------------


def add_remotes(project: Path, tmp_path: Path) -> Path:
    """A bare git remote the branch tracks and a DVC remote, both folders; returns a second clone."""
    git(project, "clone", "-q", "--bare", str(project), str(tmp_path / "origin.git"))
    git(project, "remote", "add", "origin", str(tmp_path / "origin.git"))
    git(project, "fetch", "-q", "origin")
    git(project, "branch", "-q", "--set-upstream-to=origin/main")
    subprocess.run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "dvc-remote")], check=True)
    git(project, "commit", "-q", "-am", "dvc remote")
    git(project, "push", "-q", "origin", "main")
    git(tmp_path, "clone", "-q", str(tmp_path / "origin.git"), str(tmp_path / "other"))
    return tmp_path / "other"


def retrain_candidate(score: float, **kwargs):
    return retrain(
        overrides={CANDIDATE_PARAM: score},
        targets=[CANDIDATE_STAGE],
        metric=CANDIDATE_METRIC,
        model_path=CANDIDATE_MODEL,
        model_name=MODEL_NAME,
        retries=0,
        **kwargs,
    )


@pytest.mark.slow
def test_retrain_promotes_only_better_models(project, tmp_path):
    other = add_remotes(project, tmp_path)
    (other / "NOTES.md").write_text("pushed by another machine\n")
    git(other, "add", "NOTES.md")
    git(other, "-c", "user.name=x", "-c", "user.email=x@x.invalid", "commit", "-q", "-m", "notes")
    git(other, "push", "-q", "origin", "main")

    first = retrain_candidate(0.6, name="first")
    assert first["pulled"] == ["git pull from origin/main", "dvc pull from storage"]
    assert (project / "NOTES.md").is_file()
    assert first["registered"] and first["version"] == 1 and first["previous_champion"] is None
    worse = retrain_candidate(0.4, name="worse")
    assert not worse["registered"] and "does not beat champion v1" in worse["reason"]
    better = retrain_candidate(0.8, name="better")
    assert better["registered"] and better["version"] == 2 and better["previous_champion"] == 1
    assert better["compatible"] is False  # measured against champion v1, not required

    champion = aliased_version(MODEL_NAME, "champion")
    assert champion.version == 2 and champion.run_id == better["mlflow_run"]
    assert champion.tags["metric.value"] == "0.8" and champion.tags["dvc.experiment"] == "better"
    assert "compatible_with" not in champion.tags
    assert champion.tags["model.md5"] == md5(candidate_model_bytes(0.8))
    assert champion.tags["git.commit"] == git(project, "rev-parse", "HEAD").strip()
    registered = Path(champion.source) / "model.pt"
    assert registered.read_bytes() == candidate_model_bytes(0.8)

    runs = {r.name: r for r in find_runs("eva02at")}
    assert runs["worse"].tags["retrain.decision"] == "not registered"
    assert runs["worse"].tags["retrain.reason"] == worse["reason"]
    assert runs["worse"].metrics[CANDIDATE_METRIC] == pytest.approx(0.4)
    assert runs["worse"].params[f"overrides.{CANDIDATE_PARAM}"] == "0.4"

    # the checkout is back at HEAD; each experiment stays in DVC with its own params
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""
    refs = git(project, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    assert {ref.rsplit("/", 1)[1] for ref in refs if not ref.startswith("refs/exps/exec/")} == {
        "first",
        "worse",
        "better",
    }
    assert champion.tags["dvc.experiment.commit"] in git(project, "for-each-ref", "--format=%(objectname)", "refs/exps")

    with pytest.raises(CommandError, match="absent"):  # a failed experiment leaves the champion alone
        retrain(targets=["candidate/dvc.yaml:absent"], model_name=MODEL_NAME, retries=0, name="broken")
    broken = next(r for r in find_runs("eva02at") if r.name == "broken")
    assert broken.tags["retrain.decision"] == "not registered"
    assert broken.tags["retrain.reason"].startswith("the experiment failed: `")
    assert aliased_version(MODEL_NAME, "champion").version == 2
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""


@pytest.mark.slow
def test_retrain_measures_compatibility_with_the_champion_and_can_require_it(project):
    first = retrain_candidate(0.6, name="first")
    assert first["registered"] and first["compatible"] is None
    refused = retrain_candidate(0.8, name="incompatible", require_compatible=True)
    assert not refused["registered"] and refused["compatible"] is False
    assert refused["reason"].startswith("not compatible with champion v1, which promotion requires: cross-model 0.3 <")
    promoted = retrain_candidate(0.8, name="compatible", train_compatible=True, require_compatible=True)
    assert promoted["registered"] and promoted["version"] == 2 and promoted["compatible"] is True

    champion_file = "models/registry/tiny-candidate/v1/model.pt"  # downloaded from the registry
    assert (project / champion_file).read_bytes() == candidate_model_bytes(0.6)
    champion = aliased_version(MODEL_NAME, "champion")
    assert champion.version == 2 and champion.tags["compatible_with"] == "1"
    runs = {r.name: r for r in find_runs("eva02at")}
    assert runs["first"].tags["retrain.compatible"] == "unknown"
    assert runs["incompatible"].tags["retrain.compatible"] == "no"
    assert json.loads(champion.tags["overrides"])["finetune.compatible_with"] == champion_file
    compatible = runs["compatible"]
    assert compatible.tags["retrain.compatible"] == "yes"
    assert compatible.tags["retrain.compatibility"] == "cross-model 0.61 >= champion v1's own 0.6 (candidate's own 0.8)"
    assert compatible.metrics["compatibility.criterion.old_old"] == pytest.approx(0.6)  # read from the file
    assert compatible.params["overrides.finetune.compatible_with"] == champion_file
    assert compatible.params["overrides.export.models.champion"] == champion_file
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""
