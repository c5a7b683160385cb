"""Weight-decay groups of the real EVA02-B-16 and the tiny models against an enumeration by module type; the
LAMB option against its formula."""

from __future__ import annotations

import open_clip
import pytest
import torch
from timm.optim import Lamb
from torch import nn

from eva02at.models import from_open_clip
from eva02at.train.optim import OptimParams, build_optimizer, parameter_groups

MODELS = ["EVA02-Tiny-test", "EVA02-Tiny-16", "EVA02-B-16"]
EMBEDDINGS = {"pos_embed", "cls_token", "temporal_embed", "positional_embedding", "class_embedding", "cls_emb"}
MATRICES = {"in_proj_weight", "text_projection"}  # weight matrices held directly by open_clip modules
WD = 0.01


@pytest.fixture(scope="module", params=MODELS)
def models(request) -> tuple[nn.Module, nn.Module]:
    """(open_clip image CLIP, VideoCLIP inflated from it); the real B/16 is built with random weights."""
    clip = open_clip.create_model(request.param, pretrained=None)
    return clip, from_open_clip(clip, num_frames=4)


def enumerate_by_module(model: nn.Module) -> tuple[set[str], set[str]]:
    """(decayed, not decayed) names, read off each parameter's module type and attribute name.

    Not decayed: norms, biases, embedding tables and tokens, the logit scale. Decayed: the weights of linear
    and conv layers and the matrices attention and the text projection hold directly. Anything else fails.
    """
    decay, no_decay = set(), set()
    for path, module in model.named_modules():
        for attr, _ in module.named_parameters(recurse=False):
            name = f"{path}.{attr}" if path else attr
            if (
                isinstance(module, (nn.LayerNorm, nn.Embedding))
                or attr in EMBEDDINGS
                or attr in ("bias", "in_proj_bias", "logit_scale")
            ):
                no_decay.add(name)
            elif (isinstance(module, (nn.Linear, nn.Conv2d)) and attr == "weight") or attr in MATRICES:
                decay.add(name)
            else:
                pytest.fail(f"{name} of {type(module).__name__}: the enumeration does not classify it")
    return decay, no_decay


def grouped_names(model: nn.Module, groups: list[dict]) -> dict[float, set[str]]:
    """Parameter names per weight decay of the optimizer groups; every parameter in exactly one group."""
    names = {id(param): name for name, param in model.named_parameters()}
    by_decay: dict[float, set[str]] = {}
    for group in groups:
        by_decay.setdefault(group["weight_decay"], set()).update(names[id(p)] for p in group["params"])
    assert sum(len(group["params"]) for group in groups) == len(names)
    return by_decay


def layer_counts(clip: nn.Module) -> tuple[int, int]:
    return len(clip.visual.trunk.blocks), len(clip.text.transformer.resblocks)


def test_video_model_groups(models):
    clip, video = models
    groups = grouped_names(video, parameter_groups(video, WD))
    decay, no_decay = enumerate_by_module(video)
    assert groups[WD] == decay and groups[0.0] == no_decay
    assert {
        "video.temporal_embed",
        "video.trunk.pos_embed",
        "video.trunk.cls_token",
        "text.positional_embedding",
        "text.token_embedding.weight",
    } <= no_decay
    assert {"video.trunk.patch_embed.proj.weight", "video_proj.weight", "text_proj.weight"} <= decay
    vision, text = layer_counts(clip)
    # per EVA02 block: q, k, v, proj, fc1_g, fc1_x, fc2 weights; per text block: in_proj, out_proj, c_fc, c_proj
    # plus patch conv, text projection and the two heads
    assert len(decay) == 7 * vision + 4 * text + 4
    # per EVA02 block: norm1, attn.norm, norm2, mlp.norm (weight, bias), q, v, proj, fc1_g, fc1_x, fc2 biases;
    # per text block: ln_1, ln_2 (weight, bias), in_proj, out_proj, c_fc, c_proj biases; plus cls, pos and
    # temporal embeddings, patch bias, final norm, text position and token embeddings, ln_final
    assert len(no_decay) == 14 * vision + 8 * text + 3 + 1 + 2 + 2 + 2
    assert video.no_weight_decay() == no_decay - {name for name, p in video.named_parameters() if p.ndim < 2}


def test_image_clip_groups(models):
    clip, _ = models
    groups = grouped_names(clip, parameter_groups(clip, WD))
    decay, no_decay = enumerate_by_module(clip)
    assert groups[WD] == decay and groups[0.0] == no_decay
    assert {"visual.trunk.pos_embed", "visual.trunk.cls_token", "text.token_embedding.weight", "logit_scale"} <= (
        no_decay
    )
    assert "visual.trunk.head.weight" in decay  # open_clip's image projection
    vision, text = layer_counts(clip)
    assert len(decay) == 7 * vision + 4 * text + 3  # patch conv, image and text projections
    # as for the video model, less the temporal embedding, plus the image projection's bias and the logit scale
    assert len(no_decay) == 14 * vision + 8 * text + 10 - 1 + 2


class Probe(nn.Module):
    """A model whose no-decay name is a prefix of another parameter's name."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(4, 8))
        self.pos_embed_proj = nn.Linear(8, 8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def test_names_match_exactly_and_frozen_parameters_are_left_out():
    probe = Probe()
    names = {id(p): n for n, p in probe.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in parameter_groups(probe, WD)}
    assert by_decay == {WD: {"pos_embed_proj.weight"}, 0.0: {"pos_embed", "pos_embed_proj.bias"}}


def test_lamb_takes_one_step_as_the_formula_says():
    """optim.name lamb: one step against LAMB written out in float64: Adam's bias-corrected update plus weight
    decay, scaled by the trust ratio ||w|| / ||update|| on the decayed weights only (timm's rule)."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    optimizer = build_optimizer(layer, OptimParams(name="lamb", lr=0.1, weight_decay=0.05, betas=(0.9, 0.99)))
    assert isinstance(optimizer, Lamb)
    layer(torch.randn(4, 3, dtype=torch.float64)).pow(2).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in layer.named_parameters()}
    optimizer.step()
    eps = OptimParams().eps
    for name, p in layer.named_parameters():
        g, w = grads[name], before[name]
        update = g / (g.abs() + eps)  # step 1: m_hat = g, sqrt(v_hat) = |g|
        if name == "weight":  # decayed: weight decay and the trust ratio
            update = update + 0.05 * w
            expected = w - 0.1 * (w.norm() / update.norm()) * update
        else:  # the bias is not decayed: a plain Adam-like step
            expected = w - 0.1 * update
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)
