"""Weight import and checkpoints: round trips give identical models; whatever does not fit is an error."""

from __future__ import annotations

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from eva02at.models import (
    IMAGE_FORMAT,
    VIDEO_FORMAT,
    CheckpointError,
    create_image_clip,
    from_open_clip,
    load_checkpoint_file,
    load_image_clip,
    load_video_clip,
    save_image_clip,
    save_video_clip,
)

NAME = "EVA02-Tiny-test"
CAPTIONS = ["#C C picks up a knife", "#C C closes the tap"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return open_clip.create_model(NAME, pretrained=None).eval()


@pytest.fixture(scope="module")
def model(clip):
    model = from_open_clip(clip, num_frames=4).eval()
    with torch.no_grad():
        model.video.temporal_embed.normal_()  # non-trivial values must survive the round trip too
    return model


def frames(model, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, model.num_frames, 3, model.image_size, model.image_size, generator=gen)


def assert_same_outputs(a, b) -> None:
    clip_frames, tokens = frames(a), a.tokenize(CAPTIONS)
    with torch.no_grad():
        for x, y in zip(a(clip_frames, tokens), b(clip_frames, tokens), strict=True):
            assert torch.equal(x, y)


def test_video_checkpoint_round_trip(model, tmp_path):
    optimizer = torch.optim.AdamW(model.parameters())
    model(frames(model), model.tokenize(CAPTIONS))[0].sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    extra = {"epoch": 3, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
    path = tmp_path / "video.pt"
    save_video_clip(model, path, extra=extra)
    loaded = load_video_clip(path).eval()
    assert loaded.config == model.config
    assert_same_outputs(model, loaded)
    data = load_checkpoint_file(path, VIDEO_FORMAT)
    assert data["extra"]["epoch"] == 3 and torch.equal(data["extra"]["rng"], extra["rng"])
    assert_same_outputs(model, load_video_clip(data).eval())  # resuming: one read, model and extra


@pytest.mark.parametrize("convention", ["clip_time", "index"])
def test_round_trip_after_changing_the_frame_count(model, tmp_path, convention):
    sixteen = from_open_clip(open_clip.create_model(NAME), num_frames=4, temporal_positions=convention)
    sixteen.load_state_dict(model.state_dict())
    sixteen.set_num_frames(16)
    save_video_clip(sixteen, tmp_path / "v16.pt")
    loaded = load_video_clip(tmp_path / "v16.pt")
    assert loaded.num_frames == 16
    assert loaded.config == sixteen.config
    assert (loaded.config.temporal_positions, loaded.config.reference_frames) == (convention, 4)
    assert torch.equal(loaded.video.temporal_embed, sixteen.video.temporal_embed)
    assert torch.equal(loaded.video.rope(), sixteen.video.rope())


@pytest.mark.parametrize(("embedding", "rope"), [(True, False), (False, True), (False, False)])
def test_round_trip_keeps_the_temporal_variant(model, tmp_path, embedding, rope):
    """Table IV's variants are in the checkpoint's config: export and fine-tuning rebuild the same model."""
    variant = from_open_clip(open_clip.create_model(NAME), 4, temporal_embedding=embedding, temporal_rope=rope)
    variant.set_num_frames(16)
    save_video_clip(variant, tmp_path / "variant.pt")
    loaded = load_video_clip(tmp_path / "variant.pt").eval()
    assert (loaded.config.temporal_embedding, loaded.config.temporal_rope) == (embedding, rope)
    assert (loaded.video.temporal_embed is not None) == embedding
    assert torch.equal(loaded.video.rope(), variant.video.rope())
    assert_same_outputs(variant.eval(), loaded)


def test_checkpoint_from_before_temporal_positions_counts_frame_indices(model, tmp_path):
    """A config without the fields loads as the frame-index model it was, at any frame count."""
    index = from_open_clip(open_clip.create_model(NAME), num_frames=4, temporal_positions="index")
    index.load_state_dict(model.state_dict())
    index.set_num_frames(16)
    path = tmp_path / "old.pt"
    save_video_clip(index, path)
    data = torch.load(path, weights_only=True)
    for name in ("temporal_positions", "reference_frames", "temporal_embedding", "temporal_rope"):
        del data["config"][name]
    torch.save(data, path)
    loaded = load_video_clip(path).eval()
    assert loaded.config.temporal_positions == "index"
    assert loaded.config.temporal_embedding and loaded.config.temporal_rope
    assert torch.equal(loaded.video.rope(), index.video.rope())
    assert_same_outputs(index.eval(), loaded)
    index.set_num_frames(8)  # still frame indices after another change
    loaded.set_num_frames(8)
    assert torch.equal(loaded.video.rope(), index.video.rope())


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda sd: sd.pop("video_proj.weight"), "video_proj.weight"),
        (lambda sd: sd.update({"video.trunk.extra_token": torch.zeros(1)}), "video.trunk.extra_token"),
        (lambda sd: sd.update({"text_proj.weight": torch.zeros(3, 3)}), "text_proj.weight"),
    ],
    ids=["missing", "unexpected", "mis-shaped"],
)
def test_a_checkpoint_that_does_not_fit_names_key_and_file(model, tmp_path, edit, key):
    path = tmp_path / "video.pt"
    save_video_clip(model, path)
    data = torch.load(path, weights_only=True)
    edit(data["state_dict"])
    torch.save(data, path)
    with pytest.raises(CheckpointError) as err:
        load_video_clip(path)
    assert key in str(err.value) and str(path) in str(err.value)


def test_bad_files_are_checkpoint_errors(model, tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_video_clip(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint_file(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an eva02at checkpoint"):
        load_video_clip(tmp_path / "foreign.pt")
    save_image_clip(open_clip.create_model(NAME), NAME, tmp_path / "image.pt")
    with pytest.raises(CheckpointError, match=f"expected {VIDEO_FORMAT}"):
        load_video_clip(tmp_path / "image.pt")


def test_config_changed_in_open_clip_is_an_error(model, tmp_path):
    path = tmp_path / "video.pt"
    save_video_clip(model, path)
    data = torch.load(path, weights_only=True)
    data["config"]["open_clip_cfg"]["text_cfg"]["layers"] = 7
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"text_cfg\.layers"):
        load_video_clip(path)


def test_image_clip_round_trip(clip, tmp_path):
    path = tmp_path / "image.pt"
    save_image_clip(clip, NAME, path)
    assert load_checkpoint_file(path)["format"] == IMAGE_FORMAT
    loaded = load_image_clip(path).eval()
    images, tokens = torch.randn(2, 3, 32, 32), open_clip.get_tokenizer(NAME)(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), clip.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), clip.encode_text(tokens))
    assert_state_equal(create_image_clip(NAME, weights=path), clip)  # a project checkpoint as a weights file
    with pytest.raises(CheckpointError, match="not EVA02-Tiny-16"):
        create_image_clip("EVA02-Tiny-16", weights=path)


def assert_state_equal(a, b) -> None:
    theirs = b.state_dict()
    for key, value in a.state_dict().items():
        assert torch.equal(value, theirs[key]), key


@pytest.mark.parametrize("layout", ["plain", "wrapped", "ddp", "safetensors"])
def test_weights_file_layouts(clip, tmp_path, layout):
    state = clip.state_dict()
    path = tmp_path / ("weights.safetensors" if layout == "safetensors" else "weights.pt")
    if layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    elif layout == "wrapped":
        torch.save({"state_dict": state, "epoch": 1}, path)
    elif layout == "ddp":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    assert_state_equal(create_image_clip(NAME, weights=path), clip)


def test_weights_file_that_does_not_fit_names_key_and_file(clip, tmp_path):
    state = dict(clip.state_dict())
    del state["visual.trunk.pos_embed"]
    state["visual.trunk.unknown"] = torch.zeros(2)
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        create_image_clip(NAME, weights=path)
    message = str(err.value)
    assert str(path) in message
    assert "1 missing: ['visual.trunk.pos_embed']" in message
    assert "1 unexpected: ['visual.trunk.unknown']" in message


def test_import_then_inflate_carries_the_file_weights(clip, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(clip.state_dict(), path)
    video = from_open_clip(create_image_clip(NAME, weights=path), num_frames=4)
    assert torch.equal(video.video.trunk.pos_embed, clip.visual.trunk.pos_embed)
    assert torch.equal(video.text.token_embedding.weight, clip.text.token_embedding.weight)
