"""VideoCLIP: inflation parity with open_clip, shapes, gradients, frame-count interpolation, a train step."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F

from eva02at.core.config import ConfigError
from eva02at.models import VideoCLIP, VideoCLIPConfig, from_open_clip
from eva02at.models.st_rope import spatio_temporal_rope
from eva02at.models.video_clip import DROPPED_KEYS, NEW_KEYS, video_key
from eva02at.models.video_tower import VideoTower
from tests.test_st_rope import reference_table

CAPTIONS = ["#C C cuts the onion", "#C C opens the fridge", "#C C washes a plate", "#C C stirs the pot"]


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return open_clip.create_model("EVA02-Tiny-test", pretrained=None).eval()


@pytest.fixture(scope="module")
def model(tiny_clip) -> VideoCLIP:
    torch.manual_seed(1)
    return from_open_clip(tiny_clip, num_frames=4).eval()


def random_frames(model: VideoCLIP, batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.num_frames, 3, model.image_size, model.image_size, generator=gen)


def image_features(clip, images: torch.Tensor) -> torch.Tensor:
    """open_clip's image tower output before its projection (the timm head)."""
    trunk = clip.visual.trunk
    return trunk.forward_head(trunk.forward_features(images), pre_logits=True)


@pytest.mark.parametrize("name", ["EVA02-Tiny-test", "EVA02-Tiny-16", "EVA02-B-16"])
def test_single_frame_reproduces_open_clip(name):
    torch.manual_seed(0)
    clip = open_clip.create_model(name, pretrained=None).eval()
    video = from_open_clip(clip, num_frames=1).eval()
    assert video.config.model_name == name  # found among open_clip's configs
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, video.image_size, video.image_size, generator=gen)
    tokens = video.tokenize(CAPTIONS[:1])
    with torch.no_grad():
        torch.testing.assert_close(video.video_features(images[:, None]), image_features(clip, images))
        torch.testing.assert_close(video.text_features(tokens), clip.encode_text(tokens))
    assert clip.visual.trunk.head.weight.shape[0] == clip.text.output_dim  # the caller's model is untouched


def test_key_map_carries_every_open_clip_tensor(tiny_clip, model):
    theirs, ours = tiny_clip.state_dict(), model.state_dict()
    mapped = {video_key(k): k for k in theirs if k not in DROPPED_KEYS}
    assert set(ours) == set(mapped) | set(NEW_KEYS)
    for new, old in mapped.items():
        assert torch.equal(ours[new], theirs[old]), new
    assert not model.video.temporal_embed.any()


def test_other_architectures_are_refused():
    vit = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=16, image_size=32),
        text_cfg=dict(context_length=8, vocab_size=100, width=32, heads=2, layers=1),
    )
    with pytest.raises(ValueError, match="EVA02-CLIP"):
        from_open_clip(vit, num_frames=4, model_name="ViT-B-32")
    with pytest.raises(ValueError, match="pooling is 'avg'"):
        VideoTower(timm.create_model("eva02at_micro_patch16_clip_32", global_pool="avg"), num_frames=4)


def test_attributes_for_the_data_path(model, tiny_clip):
    assert model.num_frames == 4 and model.image_size == 32
    assert model.image_mean == tuple(tiny_clip.visual.preprocess_cfg["mean"])
    assert model.image_std == tuple(tiny_clip.visual.preprocess_cfg["std"])
    tokens = model.tokenize(CAPTIONS)
    assert tokens.dtype == torch.long and tokens.shape == (4, model.text.context_length)


@pytest.mark.parametrize("num_frames", [4, 16])
def test_shapes(tiny_clip, num_frames):
    model = from_open_clip(tiny_clip, num_frames=num_frames).eval()
    with torch.no_grad():
        video, text = model(random_frames(model, 2), model.tokenize(CAPTIONS[:2]))
    assert video.shape == text.shape == (2, 256)
    with pytest.raises(ValueError, match=rf"frames must be \(B, {num_frames}, 3, 32, 32\)"):
        model.encode_video(torch.zeros(2, num_frames + 1, 3, 32, 32))


def test_tokens_are_cls_then_time_major(model):
    """Token 1 + t*N + n is patch n of frame t plus its spatial and temporal embeddings (the RoPE order)."""
    trunk, frames = model.video.trunk, random_frames(model, 2)
    with torch.no_grad():
        model.video.temporal_embed.normal_()
        try:
            tokens = model.video.embed_tokens(frames)
            temporal = model.video.temporal_embed.clone()
        finally:
            model.video.temporal_embed.zero_()
        n = trunk.patch_embed.num_patches
        assert tokens.shape == (2, 1 + model.num_frames * n, trunk.embed_dim)
        cls = trunk.cls_token[0, 0] + trunk.pos_embed[0, 0]  # (D,)
        torch.testing.assert_close(tokens[:, 0], cls.expand(2, -1))
        for t in range(model.num_frames):
            patches = trunk.patch_embed(frames[:, t])  # (B, N, D)
            expected = patches + trunk.pos_embed[:, 1:] + temporal[t]
            torch.testing.assert_close(tokens[:, 1 + t * n : 1 + (t + 1) * n], expected)


def test_frames_and_their_order_matter(model):
    frames = random_frames(model, 1)
    with torch.no_grad():
        model.video.temporal_embed.normal_()
        try:
            base = model.encode_video(frames)
            swapped = model.encode_video(frames[:, [1, 0, 2, 3]])
        finally:
            model.video.temporal_embed.zero_()
    assert not torch.allclose(base, swapped, atol=1e-4)


def test_gradients_reach_every_new_parameter(tiny_clip):
    model = from_open_clip(tiny_clip, num_frames=4)
    video, text = model(random_frames(model, 3), model.tokenize(CAPTIONS[:3]))
    info_nce(video, text).backward()
    grads = dict(model.named_parameters())
    for name in NEW_KEYS:
        assert grads[name].grad is not None and grads[name].grad.abs().sum() > 0, name
    for name, param in model.video.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_set_num_frames_interpolates_linearly(tiny_clip):
    model = from_open_clip(tiny_clip, num_frames=4).eval()
    old = torch.randn(4, model.video.width)
    with torch.no_grad():
        model.video.temporal_embed.copy_(old)
    model.set_num_frames(16)
    assert model.num_frames == model.config.num_frames == 16
    # independent: frame j of 16 sits at time (j + 0.5)/16, i.e. at old index (j + 0.5)*4/16 - 0.5
    where = (np.arange(16) + 0.5) * 4 / 16 - 0.5
    expected = np.stack([np.interp(where, np.arange(4), column) for column in old.double().numpy().T], 1)
    np.testing.assert_allclose(model.video.temporal_embed.detach().double().numpy(), expected, atol=1e-6)
    assert model.video.temporal_embed.requires_grad
    with torch.no_grad():
        assert model.encode_video(random_frames(model, 1)).shape == (1, 256)


def rope_inputs(model: VideoCLIP) -> tuple[torch.Tensor, int, int]:
    """The trunk's 2D table, grid side and head dim."""
    trunk = model.video.trunk
    return trunk.rope.get_embed(), trunk.patch_embed.grid_size[0], trunk.blocks[0].attn.head_dim


@pytest.mark.parametrize("convention", ["clip_time", "index"])
def test_both_conventions_are_the_index_table_at_the_pretraining_frame_count(tiny_clip, convention):
    model = from_open_clip(tiny_clip, num_frames=4, temporal_positions=convention)
    assert model.config.temporal_positions == convention and model.config.reference_frames == 4
    spatial, _, _ = rope_inputs(model)
    table = model.video.rope()
    assert torch.equal(table, spatio_temporal_rope(spatial, 4))
    assert torch.equal(table[: spatial.shape[0]], spatial)  # frame 0: the trunk's 2D table, bit for bit


def test_clip_time_keeps_the_pretraining_time_scale_after_set_num_frames(tiny_clip):
    model = from_open_clip(tiny_clip, num_frames=4, temporal_positions="clip_time")
    reference = model.video.rope()
    spatial, grid, head_dim = rope_inputs(model)
    n = spatial.shape[0]
    model.set_num_frames(16)
    assert model.config.reference_frames == 4 and model.config.num_frames == 16
    # frame t of 16 is at clip time (t + 0.5)/16; the 4-frame clip has that time at frame (t + 0.5)*4/16 - 0.5
    times = [(t + 0.5) / 16 * 4 - 0.5 for t in range(16)]
    torch.testing.assert_close(model.video.rope().double(), reference_table(times, grid, head_dim), atol=2e-5, rtol=0)
    model.set_num_frames(12)
    # frames 1, 4, 7, 10 of 12 sit at the clip times of frames 0..3 of 4: their angles are the reference's
    table = model.video.rope().view(12, n, -1)
    torch.testing.assert_close(table[[1, 4, 7, 10]], reference.view(4, n, -1), atol=1e-6, rtol=0)


def test_index_positions_count_frames_after_set_num_frames(tiny_clip):
    model = from_open_clip(tiny_clip, num_frames=4, temporal_positions="index")
    spatial, grid, head_dim = rope_inputs(model)
    model.set_num_frames(16)
    assert model.config.reference_frames == 4 and model.config.temporal_positions == "index"
    table = model.video.rope()
    assert torch.equal(table, spatio_temporal_rope(spatial, 16))
    torch.testing.assert_close(table.double(), reference_table(range(16), grid, head_dim), atol=2e-5, rtol=0)


def test_clip_time_rope_and_temporal_embedding_agree_about_time(tiny_clip):
    """A temporal embedding linear in the frame position stays linear in RoPE's clip-time positions."""
    model = from_open_clip(tiny_clip, num_frames=4, temporal_positions="clip_time")
    direction = torch.randn(model.video.width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.video.temporal_embed.copy_(torch.arange(4.0)[:, None] * direction)  # frame s -> s * direction
    model.set_num_frames(16)
    positions = (torch.arange(16) + 0.5) * 4 / 16 - 0.5  # RoPE's t' (float64 reference in test_st_rope)
    inside = (positions >= 0) & (positions <= 3)  # interpolation repeats the end values outside
    expected = positions[inside, None] * direction  # (frames inside, D)
    torch.testing.assert_close(model.video.temporal_embed.detach()[inside], expected, atol=1e-5, rtol=0)


def test_new_models_count_frame_indices_as_the_authors_code(tiny_clip):
    """The default (model and pretrain stage): frame t of any clip length rotated at position t."""
    from stages.pretrain import PretrainParams

    assert PretrainParams(init="", frames="", out="", checkpoints="").temporal_positions == "index"
    model = from_open_clip(tiny_clip, num_frames=4)
    assert model.config.temporal_positions == "index"
    _spatial, grid, head_dim = rope_inputs(model)
    model.set_num_frames(16)
    torch.testing.assert_close(
        model.video.rope().double(), reference_table(range(16), grid, head_dim), atol=2e-5, rtol=0
    )


@pytest.mark.parametrize("num_frames", [4, 16])
def test_without_temporal_rope_every_frame_has_the_image_table(tiny_clip, num_frames):
    """Temporal RoPE off: the rotation angles carry no temporal part, every frame gets the trunk's 2D table."""
    model = from_open_clip(tiny_clip, num_frames=4, temporal_rope=False)
    model.set_num_frames(num_frames)
    spatial, _, _ = rope_inputs(model)
    table = model.video.rope().view(num_frames, spatial.shape[0], -1)
    for frame in table:
        assert torch.equal(frame, spatial.float())
    assert model.video.temporal_embed is not None and model.config.temporal_rope is False


def test_without_temporal_embedding_there_is_no_temporal_parameter(tiny_clip):
    model = from_open_clip(tiny_clip, num_frames=4, temporal_embedding=False)
    assert not [name for name, _ in model.named_parameters() if "temporal" in name]
    assert "video.temporal_embed" not in model.state_dict()
    assert "video.temporal_embed" not in model.no_weight_decay()
    _spatial, grid, head_dim = rope_inputs(model)
    model.set_num_frames(16)
    assert model.num_frames == 16 and model.config.num_frames == 16
    torch.testing.assert_close(
        model.video.rope().double(), reference_table(range(16), grid, head_dim), atol=2e-5, rtol=0
    )
    with torch.no_grad():
        assert model.encode_video(random_frames(model, 1)).shape == (1, 256)


@pytest.mark.parametrize(("embedding", "rope"), [(True, True), (True, False), (False, True), (False, False)])
def test_frame_order_is_seen_only_through_a_temporal_signal(tiny_clip, embedding, rope):
    """Table IV's variants: with neither temporal signal, joint attention is blind to the order of the frames."""
    torch.manual_seed(2)
    model = from_open_clip(tiny_clip, num_frames=4, temporal_embedding=embedding, temporal_rope=rope).eval()
    if embedding:
        with torch.no_grad():
            model.video.temporal_embed.normal_()
    frames = random_frames(model, 1)
    with torch.no_grad():
        base, swapped = model.encode_video(frames), model.encode_video(frames[:, [1, 0, 2, 3]])
    assert torch.allclose(base, swapped, atol=1e-5) == (not embedding and not rope)


def test_unknown_temporal_positions_are_a_config_error(tiny_clip):
    with pytest.raises(ConfigError, match="temporal_positions is 'seconds'"):
        from_open_clip(tiny_clip, num_frames=4, temporal_positions="seconds")
    with pytest.raises(ConfigError, match="reference_frames must be >= 1"):
        VideoCLIPConfig("EVA02-Tiny-test", reference_frames=0)


def test_grad_checkpointing_gives_the_same_gradients(tiny_clip):
    results = []
    for enable in (False, True):
        model = from_open_clip(tiny_clip, num_frames=4)
        torch.manual_seed(0)
        model.video_proj.reset_parameters(), model.text_proj.reset_parameters()
        model.set_grad_checkpointing(enable)
        video, text = model(random_frames(model, 2), model.tokenize(CAPTIONS[:2]))
        info_nce(video, text).backward()
        results.append([video.detach()] + [p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*results, strict=True):
        torch.testing.assert_close(plain, checkpointed)


def test_bf16_autocast(model):
    frames = random_frames(model, 2)
    with torch.no_grad():
        reference = model.encode_video(frames)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model.video.rope().dtype == torch.float32
            low = model.encode_video(frames)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()  # the tower in bf16, the head in float32
    assert F.cosine_similarity(low, reference).min() > 0.99


def test_exported_embeddings_under_autocast_carry_float32_heads_and_norm(model):
    """The towers' autocast features through the heads and the norm in float64 (an independent computation): the
    autocast embeddings match to float32 noise, far below bf16's 8-bit significand (relative error ~4e-3)."""
    frames, tokens = random_frames(model, 3), model.tokenize(CAPTIONS[:3])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        video, text = model.embed_video(frames), model.embed_text(tokens)
        features = model.video_features(frames), model.text_features(tokens)
    for embedded, feature, head in zip((video, text), features, (model.video_proj, model.text_proj), strict=True):
        expected = F.normalize(feature.double() @ head.weight.double().T, dim=-1)
        assert embedded.dtype == torch.float32
        torch.testing.assert_close(embedded.double(), expected, rtol=0, atol=1e-6)


def info_nce(video: torch.Tensor, text: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarities (the pretraining loss), written here for the test."""
    logits = F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t() / temperature
    labels = torch.arange(len(video))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def test_a_train_step_lowers_the_loss_on_a_fixed_batch(tiny_clip):
    torch.manual_seed(0)
    model = from_open_clip(tiny_clip, num_frames=4).train()
    frames, tokens = random_frames(model, 4, seed=3), model.tokenize(CAPTIONS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    losses = []
    for _ in range(6):
        loss = info_nce(*model(frames, tokens))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
