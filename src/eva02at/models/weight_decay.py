"""Which parameters weight decay leaves alone, by name: the timm / open_clip convention, made whole for EVA02-CLIP.

timm and open_clip models name in ``no_weight_decay()`` the parameters to keep from decay that their shape does
not give away (position and class embeddings), relative to the module. The optimizer keeps every 1-d or scalar
tensor (biases, norm weights, gains, the logit scale) from decay by shape, as timm's ``param_groups_weight_decay``
does, and these names on top. What this module adds: open_clip's own list for an EVA02-CLIP misses its timm trunk
(open_clip's ``TimmModel`` adapter does not pass the trunk's list on) and the text tower's token table, an
embedding like the others. The lists here delegate to each part's own ``no_weight_decay()`` and add only that.
"""

from __future__ import annotations

from collections.abc import Iterable

from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer
from torch import nn


def prefixed(prefix: str, names: Iterable[str]) -> set[str]:
    """Names relative to a submodule -> names relative to its parent (``prefix`` is the submodule's path)."""
    return {f"{prefix}.{name}" for name in names}


def only_parameters(model: nn.Module, names: set[str]) -> set[str]:
    """The names that are parameters of ``model`` (timm's lists also name optional tokens a model may lack)."""
    return names & {name for name, _ in model.named_parameters()}


def text_no_weight_decay(text: TextTransformer) -> set[str]:
    """open_clip's text tower: its own list (position and, if any, class embedding) plus the token table."""
    return set(text.no_weight_decay()) | {"token_embedding.weight"}


def image_clip_no_weight_decay(clip: nn.Module) -> set[str]:
    """An open_clip EVA02-CLIP (timm image trunk): its own list, the trunk's, the text tower's, the logit scale."""
    names = set(clip.no_weight_decay())
    names |= prefixed("visual.trunk", clip.visual.trunk.no_weight_decay())
    names |= prefixed("text", text_no_weight_decay(clip.text))
    return only_parameters(clip, names | {"logit_scale", "logit_bias"})


def no_weight_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters of ``model`` kept from weight decay by name.

    An open_clip model around a timm trunk gets the complete list of ``image_clip_no_weight_decay``; any other
    model (``VideoCLIP`` included) answers for itself through timm's ``no_weight_decay()`` interface.
    """
    if isinstance(getattr(model, "visual", None), TimmModel):
        return image_clip_no_weight_decay(model)
    return set(getattr(model, "no_weight_decay", set)())
