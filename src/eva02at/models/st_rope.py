"""Spatial-temporal RoPE: EVA02's 2D RoPE composed with a full-dimension 1D temporal RoPE.

What EVA02-AT adds to the image model. For head dim ``d``, channel pair ``k`` (channels ``2k, 2k+1`` in timm's
interleaved layout) of the patch token at frame ``t`` and grid cell ``(h, w)`` is rotated by

    theta_k = t' * w_t(k) + spatial_k(h, w),      w_t(k) = temperature ** (-2k / d),  k < d/2,

where ``spatial_k`` is EVA02's 2D RoPE angle exactly as the timm trunk computes it (first d/4 pairs follow the
row, the rest the column, on positions rescaled to the 16-grid of ``ref_feat_shape``) and ``t'`` the frame's
temporal position (``frame_positions``: the frame index, or the frame's clip time on a reference frame count's
scale, as the spatial positions are on the 16-grid). Two rotations of the same channel pair compose into one
rotation by the summed angle, so the temporal rotation is folded into the trunk's sin/cos table with the
angle-addition formulas; at ``t' = 0`` the table is the trunk's, bit for bit.

The table keeps timm's format, ``(tokens, 2d)`` as ``[sin | cos]``, so timm's ``EvaAttention`` applies it to
q and k of the patch tokens (CLS and v stay unrotated) with no change to the attention code.
"""

from __future__ import annotations

import torch


def temporal_frequencies(head_dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Frequencies ``w_t(k) = temperature ** (-2k/d)`` for the ``d/2`` channel pairs, float32 ``(d/2,)``."""
    if head_dim % 4:
        raise ValueError(f"head dim {head_dim}: 2D RoPE needs a multiple of 4")
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return (temperature**-exponent).to(torch.float32)


def frame_positions(num_frames: int, reference_frames: int | None = None) -> torch.Tensor:
    """Temporal positions ``t'`` of the T frames of a clip, float32 ``(T,)``.

    Frame ``t`` of T sits at the midpoint of its segment of the clip, clip time ``(t + 0.5) / T``; counted in
    frames of a ``reference_frames``-frame clip (T_ref) that time is ``t' = (t + 0.5) * T_ref / T - 0.5``, the
    coordinate at which ``video_tower.interpolate_temporal`` samples the temporal embedding. With T_ref = T
    (the default) ``t' = t``, the frame index, exactly.
    """
    reference = num_frames if reference_frames is None else reference_frames
    frames = torch.arange(num_frames, dtype=torch.float64)
    return ((frames + 0.5) * reference / num_frames - 0.5).float()


def pair_layout(per_pair: torch.Tensor, rotate_half: bool) -> torch.Tensor:
    """Spread per-pair values ``(..., d/2)`` over channels ``(..., d)`` the way timm pairs them.

    Interleaved (EVA02): channels ``2k, 2k+1`` form pair ``k``; half layout: channels ``k, k + d/2``.
    """
    if rotate_half:
        return torch.cat([per_pair, per_pair], dim=-1)
    return per_pair.repeat_interleave(2, dim=-1)


def spatio_temporal_rope(
    spatial: torch.Tensor,
    num_frames: int,
    temperature: float = 10000.0,
    rotate_half: bool = False,
    reference_frames: int | None = None,
) -> torch.Tensor:
    """Compose the trunk's 2D RoPE table with the temporal rotation for ``num_frames`` frames.

    Args:
        spatial: the trunk's 2D table ``(N, 2d)`` as ``[sin | cos]`` for the ``N = H*W`` patch tokens.
        num_frames: T; tokens are ordered time-major, ``(t, h, w)``.
        temperature: RoPE base, the trunk's (10000 for EVA02).
        rotate_half: the trunk's channel pairing (False for EVA02: interleaved pairs).
        reference_frames: T_ref of ``frame_positions``: frames are placed on the clip-time scale of a
            T_ref-frame clip; None places them at their indices.

    Returns:
        float32 table ``(T*N, 2d)`` as ``[sin | cos]``; computed in float32 also under autocast, timm's
        attention rotates in that precision and casts the result back to q's dtype.
    """
    sin_s, cos_s = spatial.float().chunk(2, dim=-1)  # (N, d) each
    head_dim = sin_s.shape[-1]
    positions = frame_positions(num_frames, reference_frames).to(spatial.device)
    freqs = temporal_frequencies(head_dim, temperature).to(spatial.device)
    angles = pair_layout(positions[:, None] * freqs[None, :], rotate_half)  # (T, d)
    sin_t, cos_t = angles.sin()[:, None, :], angles.cos()[:, None, :]  # (T, 1, d)
    sin = sin_s * cos_t + cos_s * sin_t  # (T, N, d): sin(spatial + temporal)
    cos = cos_s * cos_t - sin_s * sin_t  # (T, N, d): cos(spatial + temporal)
    return torch.cat([sin, cos], dim=-1).flatten(0, 1)  # (T*N, 2d)
