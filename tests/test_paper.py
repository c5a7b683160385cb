"""The paper's rows: every override fits the params schema over the recipe, its DVC assignments give what the
merge gives, every published cell points at a metric the pipeline writes, and the report sets measured beside
published with the right difference, ratio and provenance."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dvc.utils.hydra import apply_overrides
from PIL import Image

from eva02at.cli import paper
from eva02at.cli.main import main
from eva02at.core.config import from_dict, read_params
from eva02at.evaluation.benchmarks.frozen import typed_entries
from rehearsal.project import make_project, merge
from stages.pretrain import PretrainParams
from tests.test_config import PARAMS, ROOT, SCHEMAS

ROWS = paper.read_rows(ROOT / "paper" / "rows")
CELLS = paper.read_published(ROOT / "paper" / "published.csv", ROWS)
RECIPE = read_params(ROOT / "rehearsal" / "recipe.yaml")
PRETRAIN_SWITCHES = {"captions", "temporal_embedding", "temporal_rope"}  # EgoClip+ and the Table IV variants
HAS_SWITCHES = {field.name for field in dataclasses.fields(PretrainParams)} >= PRETRAIN_SWITCHES


def stacked(row: paper.Row) -> dict:
    """params.yaml with the recipe, then the row, merged in: what a real run of the row reads."""
    return merge(merge(copy.deepcopy(PARAMS), copy.deepcopy(RECIPE)), copy.deepcopy(row.override))


def needs_switches(name: str) -> bool:
    return bool(PRETRAIN_SWITCHES & set(ROWS[name].override.get("pretrain", {})))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=pytest.mark.xfail(
                needs_switches(name) and not HAS_SWITCHES,
                reason="pretrain has no captions / temporal_embedding / temporal_rope keys in this schema",
                strict=True,
            ),
        )
        for name in ROWS
    ],
)
def test_every_row_fits_the_params_schema_over_the_recipe(name):
    params = stacked(ROWS[name])
    built = {section: from_dict(schema, params[section], f"{name}: {section}") for section, schema in SCHEMAS.items()}
    typed_entries(built["benchmarks"], name)


def test_the_rows_cover_the_papers_tables_and_each_row_is_published():
    assert {cell.table for cell in CELLS} == {"main", "pretraining_data", "temporal_position", "loss"}
    assert {cell.row for cell in CELLS} == set(ROWS)
    assert ROWS["b_egoclip"].override == {}  # the recipe is EVA02-AT-B on EgoClip with SMS
    assert all(ROWS[name].about for name in ROWS)  # each says what it changes


def test_every_published_cell_names_a_metric_the_evaluate_stage_writes():
    written = json.loads((ROOT / "metrics" / "eval.json").read_text())
    for cell in CELLS:
        _, benchmark, metric = cell.result.split(".")
        assert isinstance(paper.lookup(written, f"random.{benchmark}.{metric}"), float), cell
        assert 0 < cell.value < 100


@pytest.mark.parametrize("name", sorted(ROWS))
def test_the_queued_assignments_give_the_merged_override(name, tmp_path):
    """DVC applies ``-S`` through Hydra: its result must be what merging the row's file gives."""
    params_file = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_file)
    arguments = paper.queue_arguments(ROWS[name], [])
    assert arguments[:5] == ["exp", "run", "--queue", "-n", name]
    assert arguments[5::2] == ["-S"] * len(arguments[6::2])
    apply_overrides(params_file, arguments[6::2])
    assert read_params(params_file) == merge(copy.deepcopy(PARAMS), copy.deepcopy(ROWS[name].override))


def test_the_users_assignment_replaces_the_rows_value_of_the_same_key():
    row = paper.Row("r", {"pretrain": {"captions": "data/x.csv", "train": {"batch_size": 64}}}, "")
    arguments = paper.queue_arguments(row, ["++pretrain.captions=/data/egoclip_plus.csv"])
    assert arguments[6::2] == ["++pretrain.train.batch_size=64", "++pretrain.captions=/data/egoclip_plus.csv"]


def test_settings_keep_types_lists_nulls_and_an_empty_mapping():
    override = {"a": {"b": [0.5, 1.0], "c": None, "d": False, "e": "x y"}, "f": {}}
    assert paper.settings(override) == ["a.b=[0.5, 1.0]", "a.c=null", "a.d=false", 'a.e="x y"', "f={}"]


def test_the_comparison_gives_difference_ratio_and_provenance():
    params = stacked(ROWS["b_egoclip"])
    metrics = {"zero_shot": {"ek100_mir": {"mAP_avg": 0.151, "nDCG_avg": 0.311}}}
    lines = paper.compare(
        [c for c in CELLS if c.row in ("b_egoclip", "loss_mi_mm")], {"b_egoclip": paper.Run(metrics, params)}
    )
    by_key = {(line.cell.table, line.cell.row, line.cell.result): line for line in lines}
    zero_shot = by_key["pretraining_data", "b_egoclip", "zero_shot.ek100_mir.mAP_avg"]
    assert zero_shot.measured == pytest.approx(15.1)
    assert zero_shot.difference == pytest.approx(15.1 - 30.2)
    assert zero_shot.ratio == pytest.approx(0.5)
    assert zero_shot.provenance == (
        "models/pretrain/model.pt (final epoch); 16 frames; relevancy data/labels/ek100_test.npz; "
        "query texts official (video rows)"
    )
    assert zero_shot.data == "synthetic sample"  # params.yaml's paths are the sample's
    finetuned = by_key["pretraining_data", "b_egoclip", "finetuned.ek100_mir.mAP_avg"]
    assert finetuned.measured is None and finetuned.missing == "not in the run's metrics"
    assert all(line.missing == "not run" for line in lines if line.cell.row == "loss_mi_mm")


def test_the_fine_tuned_charades_ego_cell_reads_its_own_model_row():
    params = stacked(ROWS["b_egoclip_plus"])
    metrics = {"charades_finetuned": {"charades_ego": {"mAP": 0.2}}}
    cells = [c for c in CELLS if c.result.startswith("charades_finetuned.")]
    (line,) = paper.compare(cells, {"b_egoclip_plus": paper.Run(metrics, params)})
    assert line.measured == pytest.approx(20.0) and line.difference == pytest.approx(20.0 - 38.0)
    assert line.provenance == "models/finetune_charades/model.pt (final epoch); 16 frames"
    selected = merge(params, {"finetune_charades": {"train": {"select": "best val mAP"}}})
    assert paper.provenance(selected, line.cell.result).startswith("models/finetune_charades/model.pt (best val mAP)")


def test_real_data_and_a_selected_checkpoint_are_named():
    params = merge(
        stacked(ROWS["b_egoclip"]),
        {
            "frames": {"collections": {"ek100_test": {"annotations": "/data/ek100/EPIC_100_retrieval_test.csv"}}},
            "finetune": {"train": {"select": "best test mAP_avg"}},
        },
    )
    assert paper.data_note(params) == "real data"
    assert paper.provenance(params, "finetuned.ek100_mir.mAP_avg").startswith(
        "models/finetune/model.pt (best test mAP_avg); 16 frames"
    )
    assert paper.provenance(params, "zero_shot.egomcq.inter_video").endswith("; 4 frames")  # no relevancy
    published = "data/EPIC_100_retrieval_test_sentence.csv"
    merge(params, {"benchmarks": {"entries": {"ek100_mir": {"queries": published}}}})
    assert paper.provenance(params, "zero_shot.ek100_mir.mAP_avg").endswith(f"query texts as in {published}")


def test_experiments_are_read_from_dvc_exp_show_json_newest_first():
    def revision(name, value, ok=True):
        metrics = {"metrics/eval.json": {"data": {"zero_shot": {"ek100_mir": {"mAP_avg": value}}}}} if ok else {}
        return {"rev": "abc", "name": name, "data": {"metrics": metrics, "params": {"params.yaml": {"data": {}}}}}

    table = [
        {"rev": "workspace", "name": None, "data": {}, "experiments": None},
        {
            "rev": "0123",
            "name": "main",
            "data": {},
            "experiments": [
                {"name": "b_egoclip", "revs": [revision("b_egoclip", 0.3)]},
                {"name": "b_egoclip", "revs": [revision("b_egoclip", 0.2)]},
                {"name": "loss_mi_mm", "revs": [revision("loss_mi_mm", 0.1, ok=False)]},
            ],
        },
    ]
    runs = paper.runs_from_experiments(table, "metrics/eval.json")
    assert list(runs) == ["b_egoclip"]
    assert runs["b_egoclip"].metrics["zero_shot"]["ek100_mir"]["mAP_avg"] == 0.3


def test_paper_report_writes_markdown_and_png_from_saved_experiments(tmp_path, monkeypatch, capsys):
    metrics = {"zero_shot": {"ek100_mir": {"mAP_avg": 0.302, "nDCG_avg": 0.2}}}
    params = stacked(ROWS["temporal_rope_only"])
    data = {"metrics": {"metrics/eval.json": {"data": metrics}}, "params": {"params.yaml": {"data": params}}}
    saved = [{"rev": "0", "experiments": [{"revs": [{"name": "temporal_rope_only", "data": data}]}]}]
    (tmp_path / "exps.json").write_text(json.dumps(saved))
    monkeypatch.chdir(ROOT)
    status = main(["paper", "report", "--experiments", str(tmp_path / "exps.json"), "--out", str(tmp_path / "out")])
    assert status == 0 and "1 of 32 published values measured" in capsys.readouterr().out
    report = (tmp_path / "out" / "report.md").read_text()
    measured = "| temporal_rope_only | EK100 MIR mAP (zero-shot) | 28.8 | 30.2 | +1.4 | 1.049 | synthetic sample |"
    assert measured in report
    assert "| loss_mi_mm | EK100 MIR mAP (fine-tuned) | 52.1 | not run | - | - |" in report
    with Image.open(tmp_path / "out" / "report.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]


def test_bad_published_lines_are_named(tmp_path):
    good = (ROOT / "paper" / "published.csv").read_text().splitlines()
    (tmp_path / "bad.csv").write_text("\n".join([good[0], good[1].replace(",34.3,", ",n/a,")]))
    with pytest.raises(Exception, match=r"bad.csv:2: value 'n/a' is not a number"):
        paper.read_published(tmp_path / "bad.csv", ROWS)
    (tmp_path / "bad.csv").write_text("\n".join([good[0], good[1].replace("b_egoclip_plus", "b_nothing")]))
    with pytest.raises(Exception, match=r"bad.csv:2: row 'b_nothing' has no override"):
        paper.read_published(tmp_path / "bad.csv", ROWS)


def test_paper_run_refuses_an_unknown_row(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["paper", "run", "b_egoclip", "table_9", "--dry-run"]) == 1
    assert "unknown rows ['table_9']" in capsys.readouterr().err


def test_paper_list_shows_every_row(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["paper", "list"]) == 0
    shown = capsys.readouterr().out
    assert all(name in shown for name in ROWS) and 'finetune.loss="mi_mm"' in shown


@pytest.mark.slow
def test_paper_run_queues_a_named_experiment_with_the_rows_params(tmp_path, monkeypatch):
    """Through the real DVC: the queued experiment carries the row's params, read back by ``dvc exp show``."""
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert main(["paper", "run", "loss_sms_no_tolerance"]) == 0
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, check=True).stdout)
    queued = {rev["name"]: rev for base in shown for exp in base.get("experiments") or [] for rev in exp["revs"]}
    params = queued["loss_sms_no_tolerance"]["data"]["params"]["params.yaml"]["data"]
    assert params["finetune"]["losses"]["sms"] == {**PARAMS["finetune"]["losses"]["sms"], "threshold": 0.0}
    assert paper.runs_from_experiments(shown, "metrics/eval.json") == {}  # queued, not run: no metrics yet


def test_a_missing_or_broken_experiments_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["paper", "report", "--experiments", str(tmp_path / "none.json"), "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().endswith("none.json: no such file")
    (tmp_path / "broken.json").write_text("[{")
    assert main(["paper", "report", "--experiments", str(tmp_path / "broken.json"), "--out", str(tmp_path)]) == 1
    assert "broken.json: not JSON" in capsys.readouterr().err
