"""Video tower: the EVA02 image trunk (timm ``Eva``) run with full joint space-time attention.

What EVA02-AT adds to the image trunk, and all that this module does by hand:
- frames are patch-embedded one by one with the image patch conv; the tokens of all frames follow one CLS
  token, time-major ``(t, h, w)``: ``1 + T*H*W`` tokens attend jointly in every block (no new blocks);
- position: the image's learnable spatial embedding repeated over T, plus a new temporal embedding ``(T, D)``
  repeated over H*W and initialised to zero, so T = 1 reproduces the image model;
- spatial-temporal RoPE (``st_rope``) passed into timm's blocks through their ``rope`` argument, the seam
  timm's ``Eva`` itself uses for its 2D RoPE; its temporal positions are frame indices or, with a reference
  frame count, clip times on that count's scale (``st_rope.frame_positions``).
Either temporal signal can be switched off (the paper's Table IV variants): no temporal embedding parameter,
or the trunk's 2D RoPE table repeated over the frames.
Everything else (patch conv, blocks, SDPA attention, final norm, CLS pooling) is timm's own modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import RotaryEmbeddingCat
from timm.models.eva import Eva
from torch import nn
from torch.utils.checkpoint import checkpoint

from eva02at.models.st_rope import spatio_temporal_rope
from eva02at.models.weight_decay import prefixed


def interpolate_temporal(embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resample a temporal embedding ``(T, D)`` to ``(num_frames, D)`` linearly.

    Frames sit at the midpoints of T equal segments of a clip, i.e. at times ``(i + 0.5) / T``; with
    ``align_corners=False`` each new frame takes the value at its own midpoint time, and the two outer
    half-segments repeat the first/last value.
    """
    resampled = F.interpolate(embed.t()[None], num_frames, mode="linear", align_corners=False)  # (1, D, T')
    return resampled[0].t()  # (T', D)


def check_trunk(trunk: nn.Module) -> None:
    """Refuse trunks whose token layout the video tower does not reproduce: an error, not a wrong model."""
    problems = []
    if not isinstance(trunk, Eva):
        problems.append(f"trunk is {type(trunk).__name__}, not timm Eva")
    else:
        if trunk.cls_token is None or trunk.num_prefix_tokens != 1:
            problems.append("needs exactly one CLS token and no register tokens")
        if trunk.pos_embed is None or trunk.no_embed_class:
            problems.append("needs a learnable position embedding with a CLS slot")
        if not isinstance(trunk.rope, RotaryEmbeddingCat) or trunk.rope.feat_shape is None:
            problems.append("needs EVA02's fixed-grid 2D RoPE (RotaryEmbeddingCat)")
        if trunk.dynamic_img_size or trunk.patch_drop is not None or trunk.attn_pool is not None:
            problems.append("dynamic image size, patch dropout and attention pooling are not supported")
        if trunk.patch_embed.img_size[0] != trunk.patch_embed.img_size[1]:
            problems.append(f"frames must be square, the trunk takes {trunk.patch_embed.img_size}")
        if trunk.global_pool != "token":
            problems.append(f"pooling is {trunk.global_pool!r}, EVA02-CLIP pools the CLS token")
    if problems:
        raise ValueError("unsupported image trunk for the video tower: " + "; ".join(problems))


class VideoTower(nn.Module):
    """EVA02 trunk over ``(B, T, 3, H, W)`` frames; returns pooled features ``(B, D)`` (no projection).

    Adopts ``trunk`` (does not copy it) and removes its classifier head, which in open_clip's EVA02-CLIP is
    the image projection: the video-language model puts its own head on top. ``reference_frames`` is the T_ref
    whose clip-time scale temporal RoPE measures frame positions on; None counts frame indices.
    ``temporal_embedding`` and ``temporal_rope`` switch the two temporal signals on or off.
    """

    def __init__(
        self,
        trunk: Eva,
        num_frames: int,
        reference_frames: int | None = None,
        temporal_embedding: bool = True,
        temporal_rope: bool = True,
    ) -> None:
        super().__init__()
        check_trunk(trunk)
        trunk.reset_classifier(0)
        for block in trunk.blocks:
            # joint attention over 1 + T*H*W tokens needs SDPA's fused kernels, whatever timm's env default is
            block.attn.fused_attn = True
        self.trunk = trunk
        self._num_frames = num_frames
        embed = nn.Parameter(torch.zeros(num_frames, trunk.embed_dim)) if temporal_embedding else None
        self.register_parameter("temporal_embed", embed)
        self.reference_frames = reference_frames
        self.temporal_rope = temporal_rope
        self.grad_checkpointing = False

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def width(self) -> int:
        return self.trunk.embed_dim

    def no_weight_decay(self) -> set[str]:
        """Embeddings kept from weight decay (timm's interface): the temporal one and the trunk's own list."""
        own = {"temporal_embed"} if self.temporal_embed is not None else set()
        return own | prefixed("trunk", self.trunk.no_weight_decay())

    def set_num_frames(self, num_frames: int) -> None:
        """Interpolate the temporal embedding to a new frame count (a new Parameter: rebuild optimizers)."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if num_frames != self.num_frames and self.temporal_embed is not None:
            with torch.no_grad():
                embed = interpolate_temporal(self.temporal_embed.detach(), num_frames)
            self.temporal_embed = nn.Parameter(embed, requires_grad=self.temporal_embed.requires_grad)
        self._num_frames = num_frames

    def rope(self) -> torch.Tensor:
        """The spatial-temporal RoPE table ``(T*N, 2d)`` for the trunk's grid and the current frame count;
        without temporal RoPE the trunk's 2D table for every frame (float32, as ``spatio_temporal_rope``)."""
        rope = self.trunk.rope
        if not self.temporal_rope:
            return rope.get_embed().float().repeat(self.num_frames, 1)
        return spatio_temporal_rope(
            rope.get_embed(), self.num_frames, rope.temperature, rope.rotate_half, self.reference_frames
        )

    def embed_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``(B, T, 3, H, W)`` -> tokens ``(B, 1 + T*N, D)`` with position embeddings added."""
        trunk = self.trunk
        height, width = trunk.patch_embed.img_size
        if frames.ndim != 5 or tuple(frames.shape[1:]) != (self.num_frames, 3, height, width):
            raise ValueError(f"frames must be (B, {self.num_frames}, 3, {height}, {width}), got {tuple(frames.shape)}")
        batch, num_frames = frames.shape[:2]
        x = trunk.patch_embed(frames.flatten(0, 1))  # (B*T, N, D)
        x = x.unflatten(0, (batch, num_frames))  # (B, T, N, D)
        x = x + trunk.pos_embed[:, None, 1:]  # spatial (1, 1, N, D)
        if self.temporal_embed is not None:
            x = x + self.temporal_embed[None, :, None]  # (1, T, 1, D)
        x = x.flatten(1, 2)  # (B, T*N, D), time-major
        cls = (trunk.cls_token + trunk.pos_embed[:, :1]).expand(batch, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + T*N, D)
        return trunk.norm_pre(trunk.pos_drop(x))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Pooled, normed CLS features ``(B, D)``; at T = 1 open_clip's image features before projection."""
        x = self.embed_tokens(frames)
        rope = self.rope()
        for block in self.trunk.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, rope=rope, use_reentrant=False)
            else:
                x = block(x, rope=rope)
        x = self.trunk.norm(x)
        return self.trunk.forward_head(x, pre_logits=True)  # (B, D)
