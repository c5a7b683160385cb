"""Spatial-temporal RoPE against timm's EVA02 2D RoPE and a float64 brute-force reference."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import timm
import torch
from timm.layers import apply_rot_embed_cat

import eva02at.models  # noqa: F401  (registers the tiny trunks)
from eva02at.models.st_rope import frame_positions, spatio_temporal_rope


@pytest.fixture(scope="module")
def micro_trunk():
    return timm.create_model("eva02at_micro_patch16_clip_32").eval()


@pytest.fixture(scope="module")
def base_trunk():
    return timm.create_model("eva02_base_patch16_clip_224").eval()


def reference_angles(times: Sequence[float], grid: int, head_dim: int, ref_grid: int = 16) -> torch.Tensor:
    """theta[i, h, w, k] for channel pair k of a frame at temporal position times[i], written from the
    method's formula in float64, loop by loop."""
    quarter = head_dim // 4
    theta = torch.zeros(len(times), grid, grid, head_dim // 2, dtype=torch.float64)
    for i, t in enumerate(times):
        for h in range(grid):
            for w in range(grid):
                p_h, p_w = h * ref_grid / grid, w * ref_grid / grid
                for k in range(head_dim // 2):
                    temporal = t * 10000.0 ** (-2 * k / head_dim)
                    if k < quarter:
                        spatial = p_h * 10000.0 ** (-k / quarter)
                    else:
                        spatial = p_w * 10000.0 ** (-(k - quarter) / quarter)
                    theta[i, h, w, k] = temporal + spatial
    return theta


def rotate_pairs(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2k, 2k+1) of x (..., d) by theta (..., d/2), float64."""
    x = x.double()
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * theta.cos() - odd * theta.sin()
    out[..., 1::2] = even * theta.sin() + odd * theta.cos()
    return out


@pytest.mark.parametrize("trunk_name", ["micro_trunk", "base_trunk"])
def test_frame_zero_is_the_trunks_2d_rope(trunk_name, request):
    trunk = request.getfixturevalue(trunk_name)
    spatial = trunk.rope.get_embed()
    table = spatio_temporal_rope(spatial, num_frames=3, temperature=trunk.rope.temperature)
    n = spatial.shape[0]
    assert table.shape == (3 * n, spatial.shape[1])
    assert torch.equal(table[:n], spatial)
    assert not torch.allclose(table[n : 2 * n], spatial)


@pytest.mark.parametrize("trunk_name", ["micro_trunk", "base_trunk"])
def test_table_matches_the_formula(trunk_name, request):
    trunk = request.getfixturevalue(trunk_name)
    grid = trunk.patch_embed.grid_size[0]
    head_dim = trunk.blocks[0].attn.head_dim
    num_frames = 16
    table = spatio_temporal_rope(trunk.rope.get_embed(), num_frames)
    torch.testing.assert_close(table.double(), reference_table(range(num_frames), grid, head_dim), atol=2e-5, rtol=0)


def reference_table(times: Sequence[float], grid: int, head_dim: int) -> torch.Tensor:
    """The ``[sin | cos]`` table (T*N, 2d) of interleaved pairs for frames at ``times``, float64."""
    theta = reference_angles(times, grid, head_dim).flatten(0, 2)  # (T*N, d/2)
    return torch.cat([theta.sin().repeat_interleave(2, -1), theta.cos().repeat_interleave(2, -1)], -1)


@pytest.mark.parametrize("num_frames", [1, 4, 16])
def test_positions_at_the_reference_frame_count_are_the_frame_indices(num_frames, micro_trunk):
    indices = torch.arange(num_frames, dtype=torch.float32)
    assert torch.equal(frame_positions(num_frames), indices)
    assert torch.equal(frame_positions(num_frames, reference_frames=num_frames), indices)
    spatial = micro_trunk.rope.get_embed()
    index_table = spatio_temporal_rope(spatial, num_frames)
    assert torch.equal(spatio_temporal_rope(spatial, num_frames, reference_frames=num_frames), index_table)


@pytest.mark.parametrize(("num_frames", "reference_frames"), [(16, 4), (8, 4), (1, 4), (2, 16)])
def test_clip_time_positions_keep_each_frames_time(num_frames, reference_frames):
    """Frame t of T covers the clip's segment [t/T, (t+1)/T]; its midpoint is the midpoint of its position
    on the reference scale, where frame s covers [s/T_ref, (s+1)/T_ref]."""
    positions = frame_positions(num_frames, reference_frames).double()
    segment_starts = torch.arange(num_frames, dtype=torch.float64) / num_frames
    midpoints = segment_starts + 0.5 / num_frames
    torch.testing.assert_close((positions + 0.5) / reference_frames, midpoints, atol=1e-7, rtol=0)


@pytest.mark.parametrize("rotate_half", [False, True])
def test_scores_depend_only_on_the_time_difference(rotate_half):
    trunk = timm.create_model("eva02at_tiny_patch16_clip_64", rope_rotate_half=rotate_half)
    assert trunk.rope.rotate_half == rotate_half
    num_frames, n = 8, trunk.patch_embed.num_patches
    table = spatio_temporal_rope(trunk.rope.get_embed(), num_frames, rotate_half=rotate_half)
    head_dim = table.shape[1] // 2
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, n, head_dim, generator=gen, dtype=torch.float64)
    # the same query/key content placed at every frame: (T*N, d)
    q_rot = apply_rot_embed_cat(q.repeat(num_frames, 1), table.double(), half=rotate_half)
    k_rot = apply_rot_embed_cat(k.repeat(num_frames, 1), table.double(), half=rotate_half)
    q_rot, k_rot = q_rot.view(num_frames, n, -1), k_rot.view(num_frames, n, -1)  # (T, N, d)
    scores = torch.einsum("tnd,smd->tsnm", q_rot, k_rot)  # (T, T, N, N)
    for shift in (1, 3):
        torch.testing.assert_close(scores[shift:, shift:], scores[:-shift, :-shift], atol=1e-5, rtol=0)
    assert not torch.allclose(scores[0, 1], scores[0, 2], atol=1e-3)  # but it does depend on the difference


def test_attention_rotates_patch_q_k_only():
    """timm's attention with the table == brute force where CLS and v are not rotated (float64)."""
    trunk = timm.create_model("eva02at_micro_patch16_clip_32").eval()
    num_frames, grid = 3, trunk.patch_embed.grid_size[0]
    attn = trunk.blocks[0].attn
    heads, head_dim = attn.num_heads, attn.head_dim
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1 + num_frames * grid * grid, trunk.embed_dim, generator=gen)
    with torch.no_grad():
        for p in attn.parameters():  # non-trivial q/v biases and scale norm
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        table = spatio_temporal_rope(trunk.rope.get_embed(), num_frames)
        got = attn(x, rope=table)

        xd = x.double()
        q, k, v = (linear64(xd, proj) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        q, k, v = (t.view(2, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, L, d)
        theta = reference_angles(range(num_frames), grid, head_dim).flatten(0, 2)  # (T*N, d/2)
        q = torch.cat([q[:, :, :1], rotate_pairs(q[:, :, 1:], theta)], dim=2)
        k = torch.cat([k[:, :, :1], rotate_pairs(k[:, :, 1:], theta)], dim=2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(2, -1, heads * head_dim)  # (B, L, D)
        out = torch.nn.functional.layer_norm(
            out, (out.shape[-1],), attn.norm.weight.double(), attn.norm.bias.double(), attn.norm.eps
        )
        expected = linear64(out, attn.proj)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=0)


def linear64(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.double()
    return torch.nn.functional.linear(x, layer.weight.double(), bias)
