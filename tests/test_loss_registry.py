"""A loss is one module, listed in ``finetuning.py`` when fine-tuning may choose it: a toy loss added to a copy
of the project is chosen and checked by a params file and trains through the training task, and only the stages
that can use it depend on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eva02at.core.config import ConfigError, from_dict, read_params
from rehearsal.project import copy_project, override_params
from stages.finetune import FinetuneParams
from tests.stage_deps import ROOT, derived_code_deps, listed_code_deps, stages_using, write_code_deps
from tests.test_losses import loop_terms, random_case

TOY_MODULE = "src/eva02at/train/losses/toy_hinge.py"
FINETUNING = "src/eva02at/train/losses/finetuning.py"
CHECK = """\
import json, sys, types
import torch
from eva02at.core.config import ConfigError, read_section
from eva02at.train.losses import configured_loss
from eva02at.train.tasks import VideoTextTask
from stages.finetune import FinetuneParams

class Lookup:  # the relevancy table's lookup: rows videos, columns captions
    def __init__(self, matrix):
        self.matrix = matrix
    def lookup(self, videos, captions):
        return self.matrix[videos][:, captions]

params = read_section(FinetuneParams, "params.yaml", "finetune")
video, text, relevance = torch.load("case.pt")
model = types.SimpleNamespace(image_size=8, image_mean=(0.5,) * 3, image_std=(0.5,) * 3, tokenizer=None)
task = VideoTextTask(model, configured_loss(params.loss, params.losses), relevancy=Lookup(relevance.numpy()))
order = torch.arange(len(video))
loss = task.batch_loss(video.requires_grad_(), text.requires_grad_(), {"videos": order, "captions": order}, None)
loss.backward()
try:
    read_section(FinetuneParams, "bad.yaml", "finetune")
    refused = None
except ConfigError as err:
    refused = str(err)
json.dump({"loss": loss.item(), "gradient": video.grad.abs().sum().item(), "refused": refused}, sys.stdout)
"""


def add_toy_loss(project: Path) -> None:
    """What the checklist asks: the module, its name among fine-tuning's choices, the params entry."""
    (project / TOY_MODULE).write_text((ROOT / "tests" / "toy_loss.py").read_text())
    choices = (project / FINETUNING).read_text().replace("mi_mm, sms", "mi_mm, sms, toy_hinge")
    assert choices.count("toy_hinge") == 2  # imported, and listed among the choices
    (project / FINETUNING).write_text(choices)
    chosen = {"loss": "toy_hinge", "losses": {"toy_hinge": {"scale": 0.5}}}
    override_params(project / "params.yaml", {"finetune": chosen})


def test_a_toy_loss_module_is_selected_by_params_and_trains_through_the_task(tmp_path):
    project = copy_project(tmp_path / "project")
    add_toy_loss(project)
    bad = read_params(project / "params.yaml")
    bad["finetune"]["losses"]["toy_hinge"]["scale"] = -1
    (project / "bad.yaml").write_text(json.dumps(bad))
    video, text, relevance = random_case(batch=6, dim=5, seed=3)
    torch.save((video, text, relevance), project / "case.pt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project / "src"), str(project)])}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    terms = list(loop_terms(video, text, relevance))  # (d, dR) of every ordered pair, float64 loops
    expected = sum(max(0.0, 0.5 * dr - d) for d, dr in terms) / len(terms)
    assert result["loss"] == pytest.approx(expected, rel=1e-12) and result["gradient"] > 0
    refusal = "bad.yaml: finetune.losses.toy_hinge.scale = -1: Input should be greater than or equal to 0"
    assert result["refused"] == refusal


def test_a_loss_no_module_registers_is_refused_naming_the_key_and_the_registered_names():
    section = {**read_params(ROOT / "params.yaml")["finetune"], "loss": "toy_hinge"}
    with pytest.raises(ConfigError) as err:
        from_dict(FinetuneParams, section, "finetune")
    assert str(err.value) == (
        "finetune.loss = 'toy_hinge': not a registered loss; known: ['adaptive_mi_mm', 'mi_mm', 'sms']"
    )


def test_only_the_stages_that_can_choose_a_new_loss_depend_on_its_module(tmp_path):
    project = copy_project(tmp_path / "project")
    add_toy_loss(project)
    packages = {"eva02at": project / "src", "stages": project}
    write_code_deps(project, packages)
    assert listed_code_deps(project, packages) == derived_code_deps(project, packages)
    assert stages_using(project, TOY_MODULE, packages) == ["finetune", "finetune_charades"]
    infonce = "src/eva02at/train/losses/infonce.py"
    assert stages_using(project, infonce, packages) == ["image_clip", "pretrain"]
