"""Compatible fine-tuning: every compatibility term against a float64 loop, the Procrustes start, a reference
that is frozen and leaves training alone when it weighs nothing, the chain recorded in checkpoints, and the
evaluation's criterion."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from eva02at.core.config import ConfigError, from_dict, read_params
from eva02at.core.digest import file_digest
from eva02at.core.distributed import DistInfo
from eva02at.data.shards import FrameSpec
from eva02at.models import from_open_clip, load_checkpoint_file, load_video_clip, save_video_clip
from eva02at.models.compatibility import (
    compatible_digests,
    criterion,
    load_reference,
    procrustes_rotation,
    recorded_chain,
    rotate_onto,
)
from eva02at.models.video_clip import unit_float32
from eva02at.train.data import ClipPairs, OwnCaptions
from eva02at.train.loop import TrainParams, train
from eva02at.train.losses import finetuning, get_loss, infonce  # noqa: F401  (registers their losses)
from eva02at.train.losses.cross_model import COMPATIBILITY_TERMS
from eva02at.train.optim import OptimParams
from eva02at.train.sampling import RelevantPairSampler
from eva02at.train.tasks import VideoTextTask, global_loss
from stages.finetune import FinetuneParams
from tests.test_embeddings import make_checkpoint
from tests.test_losses import cosine, loop_sms
from tests.train_fixtures import write_clips

CPU = DistInfo(0, 1, 0, torch.device("cpu"))
ROOT = Path(__file__).resolve().parents[1]


class Lookup:
    """The relevancy table's interface over a dense matrix R (videos x sentences)."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = matrix

    def lookup(self, videos: np.ndarray, captions: np.ndarray) -> np.ndarray:
        return self.matrix[videos][:, captions]


def cross_case(seed: int, batch: int = 6, dim: int = 5):
    """New and old embeddings of one batch, its (video, caption) indices and a relevancy matrix with few levels."""
    gen = torch.Generator().manual_seed(seed)
    video, text, old_video, old_text = (torch.randn(batch, dim, generator=gen, dtype=torch.float64) for _ in range(4))
    matrix = (torch.randint(0, 5, (10, 9), generator=gen) / 4).double().numpy()
    indices = {
        "videos": torch.randperm(10, generator=gen)[:batch],
        "captions": torch.randint(0, 9, (batch,), generator=gen),
    }
    return video, text, old_video, old_text, matrix, indices


def loop_alignment(new: torch.Tensor, old: torch.Tensor) -> float:
    """Mean of 1 - cos(new_i, old_i) over the rows, with plain float64 loops."""
    return sum(1 - cosine(a, b) for a, b in zip(new.tolist(), old.tolist(), strict=True)) / len(new)


@pytest.mark.parametrize("form", sorted(COMPATIBILITY_TERMS))
@pytest.mark.parametrize("seed", range(3))
def test_the_compatibility_loss_matches_a_float64_loop(seed, form):
    video, text, old_video, old_text, matrix, batch = cross_case(seed)
    soft = torch.tensor(
        [[matrix[a, b] for b in batch["captions"].tolist()] for a in batch["videos"].tolist()], dtype=torch.float64
    )  # C[a, b] = R(video a, caption b), looked up one entry at a time
    weight = 0.7
    own, _ = loop_sms(video, text, soft)
    new_text, _ = loop_sms(old_video, text, soft)  # new texts against the old videos
    new_video, _ = loop_sms(video, old_text, soft)  # new videos against the old texts
    aligned = 0.5 * (loop_alignment(video, old_video) + loop_alignment(text, old_text))
    cross = 0.5 * (new_text + new_video)
    term = {"cross": cross, "new_text": new_text, "cross_align": cross + aligned, "align": aligned}[form]
    got = global_loss(video, text, batch, get_loss("sms"), Lookup(matrix), (old_video, old_text), weight, form)
    assert got.item() == pytest.approx(own + weight * term, rel=1e-12)
    assert global_loss(video, text, batch, get_loss("sms"), Lookup(matrix)).item() == pytest.approx(own, rel=1e-12)


@pytest.mark.parametrize("form", sorted(COMPATIBILITY_TERMS))
def test_only_the_new_embeddings_receive_gradients_and_they_are_exact(form):
    video, text, old_video, old_text, matrix, batch = cross_case(seed=5)
    old = (old_video.requires_grad_(), old_text.requires_grad_())
    inputs = (video.requires_grad_(), text.requires_grad_())

    def loss(v, t):
        return global_loss(v, t, batch, get_loss("sms"), Lookup(matrix), old, 0.5, form)

    assert torch.autograd.gradcheck(loss, inputs)  # against finite differences, float64
    loss(*inputs).backward()
    assert old_video.grad is None and old_text.grad is None


def tiny_model(seed: int, num_frames: int = 2, embed_dim: int = 16):
    torch.manual_seed(seed)
    return from_open_clip(open_clip.create_model("EVA02-Tiny-test", pretrained=None), num_frames, embed_dim)


def test_the_reference_is_frozen_at_the_new_frame_count_and_starts_the_chain(tmp_path):
    old = make_checkpoint(tmp_path / "old.pt", num_frames=4, seed=1)
    new = tiny_model(0, num_frames=2)
    reference = load_reference(old, new, 0.5, ["wash the cup"])
    assert reference.model.num_frames == 2 and not reference.model.training
    assert not any(p.requires_grad for p in reference.model.parameters())
    assert reference.chain == [{"sha256": file_digest(old), "path": str(old)}] and reference.weight == 0.5
    adapted = load_video_clip(old)  # what the export does for a 2-frame collection
    adapted.set_num_frames(2)
    frames, tokens = torch.randn(3, 2, 3, 32, 32), new.tokenize(["a", "b", "c"])
    with torch.no_grad():
        expected = adapted.eval()(frames, tokens)
    for got, want in zip(reference.embed(frames, tokens), expected, strict=True):
        torch.testing.assert_close(got, want)
        assert not got.requires_grad


def test_the_chain_is_transitive_and_known_from_the_file_alone(tmp_path):
    first = make_checkpoint(tmp_path / "first.pt", seed=1)
    second, third = tiny_model(2, num_frames=4), tiny_model(3, num_frames=4)
    VideoTextTask(second, get_loss("infonce"), reference=load_reference(first, second, 1.0)).save(
        tmp_path / "second.pt", {"train_steps": 1}
    )
    VideoTextTask(third, get_loss("infonce"), reference=load_reference(tmp_path / "second.pt", third, 1.0)).save(
        tmp_path / "third.pt", {"train_steps": 1}
    )
    digests = [file_digest(tmp_path / f"{name}.pt") for name in ("first", "second", "third")]
    assert [link["sha256"] for link in recorded_chain(tmp_path / "third.pt")] == digests[1::-1]
    assert recorded_chain(tmp_path / "third.pt")[0]["path"] == str(tmp_path / "second.pt")
    assert compatible_digests(tmp_path / "third.pt") == set(digests)
    assert load_checkpoint_file(tmp_path / "third.pt")["extra"]["train_steps"] == 1
    assert recorded_chain(first) == [] and compatible_digests(first) == {digests[0]}
    plain = tiny_model(4, num_frames=4)  # fine-tuned from a compatible model without the term: no chain
    save_video_clip(plain, tmp_path / "plain.pt", {"train_steps": 1})
    assert recorded_chain(tmp_path / "plain.pt") == []


def test_the_params_offer_exactly_the_compatibility_terms_and_refuse_others_in_one_line():
    section = {**read_params(ROOT / "params.yaml")["finetune"], "compatibility_form": "orthogonal"}
    with pytest.raises(ConfigError) as err:
        from_dict(FinetuneParams, section, "finetune")
    assert str(err.value).startswith("finetune.compatibility_form = 'orthogonal': Input should be ")
    assert sorted(re.findall(r"'(\w+)'", str(err.value))[1:]) == sorted(COMPATIBILITY_TERMS)
    accepted = from_dict(FinetuneParams, {**section, "compatibility_form": "align"}, "finetune")
    assert accepted.compatibility_form == "align"


def random_rotation(dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return q


def test_procrustes_recovers_a_known_rotation_and_is_the_best_one():
    gen = torch.Generator().manual_seed(3)
    new = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    rotation = random_rotation(6, seed=4)
    torch.testing.assert_close(procrustes_rotation(new, new @ rotation.T), rotation, rtol=0, atol=1e-12)
    old = new @ rotation.T + 0.3 * torch.randn(40, 6, generator=gen, dtype=torch.float64)  # no exact fit
    fitted = procrustes_rotation(new, old)
    torch.testing.assert_close(fitted @ fitted.T, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    error = ((new @ fitted.T - old) ** 2).sum()
    assert all(error <= ((new @ random_rotation(6, seed).T - old) ** 2).sum() for seed in range(50))
    assert error <= ((new @ rotation.T - old) ** 2).sum()


def test_rotating_onto_a_rotated_copy_gives_back_the_reference_and_keeps_the_models_own_similarities():
    reference = tiny_model(0).eval()
    model = tiny_model(0)
    rotation = random_rotation(16, seed=5).float()
    with torch.no_grad():
        for head in (model.video_proj, model.text_proj):
            head.weight.copy_(rotation @ head.weight)
    texts = [
        f"take the {noun} from the {place}"
        for noun in ("cup", "knife", "pan", "lid", "bowl")
        for place in ("sink", "shelf", "table", "drawer", "fridge")
    ]  # 25 texts for 16 dimensions
    frames, tokens = torch.randn(3, 2, 3, 32, 32), model.tokenize(texts[:3])
    with torch.no_grad():
        before = [unit_float32(x) for x in model.eval()(frames, tokens)]
    assert rotate_onto(model.train(), reference, texts) == pytest.approx(1.0, abs=1e-5)
    assert model.training  # left in the mode it was given in
    with torch.no_grad():
        after = [unit_float32(x) for x in model.eval()(frames, tokens)]
        expected = [unit_float32(x) for x in reference(frames, tokens)]
    for got, want in zip(after, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(after[1] @ after[0].T, before[1] @ before[0].T, rtol=0, atol=1e-5)


def test_a_reference_that_cannot_see_the_same_inputs_is_refused(tmp_path):
    other_width = tmp_path / "wide.pt"
    save_video_clip(tiny_model(1, embed_dim=8), other_width)
    with pytest.raises(ConfigError, match=r"wide\.pt: cannot be the compatibility reference: embedding width 8"):
        load_reference(other_width, tiny_model(0), 1.0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("shards"), FrameSpec(num_frames=2, size=32), 12)


def train_steps(task: VideoTextTask, shards, checkpoint) -> None:
    config = TrainParams(epochs=1, batch_size=4, workers=0, log_every=1, checkpoint_every=10)
    sampler = RelevantPairSampler(OwnCaptions(12), config.batch_size, seed=config.seed)
    dataset = ClipPairs(shards, shards.clip_ids, shards.texts(shards.clip_ids))
    train(task, sampler, dataset, config, OptimParams(lr=1e-3), checkpoint, CPU, "run")


def test_a_reference_that_weighs_nothing_leaves_training_bit_for_bit_and_stays_untouched(shards, tmp_path):
    old = make_checkpoint(tmp_path / "old.pt", num_frames=2, seed=1)
    plain = VideoTextTask(tiny_model(0), get_loss("infonce"))
    train_steps(plain, shards, tmp_path / "plain" / "checkpoint.pt")
    for weight in (0.0, 1.0):
        reference = load_reference(old, tiny_model(0), weight)
        task = VideoTextTask(tiny_model(0), get_loss("infonce"), reference=reference)
        train_steps(task, shards, tmp_path / f"w{weight}" / "checkpoint.pt")
        same = [torch.equal(a, b) for a, b in zip(plain.model.parameters(), task.model.parameters(), strict=True)]
        assert all(same) if weight == 0 else not all(same)  # the term moves the model only when it weighs
        frozen = load_video_clip(old).state_dict()
        assert all(torch.equal(frozen[k], v) for k, v in reference.model.state_dict().items())
        assert not reference.model.training
        saved = load_checkpoint_file(tmp_path / f"w{weight}" / "checkpoint.pt")["extra"]
        assert saved["compatible_with"] == reference.chain and saved["step"] == 3


def test_the_criterion_asks_both_cross_scores_to_reach_the_old_models_own():
    assert criterion(0.4, 0.5, 0.4, 0.45)["compatible"] == 1.0  # equal counts
    assert criterion(0.4, 0.5, 0.45, 0.39)["compatible"] == 0.0
    assert criterion(0.4, 0.5, 0.41, 0.42) == {
        "old_old": 0.4,
        "new_new": 0.5,
        "new_text_old_video": 0.41,
        "old_text_new_video": 0.42,
        "compatible": 1.0,
    }


def cross_top1(texts: torch.Tensor, videos: torch.Tensor) -> float:
    """Text-to-video top-1 accuracy when text i belongs to video i."""
    return (texts @ videos.T).argmax(dim=1).eq(torch.arange(len(texts))).double().mean().item()


def train_free_embeddings(old: tuple[torch.Tensor, torch.Tensor] | None, form: str = "cross", steps: int = 150):
    """A new 'model' that starts elsewhere: free unit embeddings of 24 (video, text) pairs from another seed,
    trained with InfoNCE on its own pairs, plus the compatibility term ``form`` against ``old`` when given."""
    gen = torch.Generator().manual_seed(2)
    video, text = (torch.randn(24, 8, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    optimizer = torch.optim.Adam([video, text], lr=0.05)
    batch = {"videos": torch.arange(24), "captions": torch.arange(24)}
    for _ in range(steps):
        optimizer.zero_grad()
        v, t = (torch.nn.functional.normalize(x, dim=1) for x in (video, text))
        global_loss(v, t, batch, get_loss("infonce", temperature=0.1), None, old, 1.0, form).backward()
        optimizer.step()
    return tuple(torch.nn.functional.normalize(x.detach(), dim=1) for x in (video, text))


def item_cosine(new: torch.Tensor, old: torch.Tensor) -> float:
    """Mean cosine of each unit embedding with the old model's embedding of the same item."""
    return (new * old).sum(dim=1).mean().item()


@pytest.mark.parametrize("form", ["cross", "cross_align"])
def test_the_term_puts_a_model_that_starts_elsewhere_into_the_old_space(form):
    gen = torch.Generator().manual_seed(1)
    old_video = torch.nn.functional.normalize(torch.randn(24, 8, generator=gen, dtype=torch.float64), dim=1)
    old_text = torch.nn.functional.normalize(
        old_video + 0.1 * torch.randn(24, 8, generator=gen, dtype=torch.float64), dim=1
    )
    assert cross_top1(old_text, old_video) == 1.0  # the old model solved its task
    chance = 1 / 24
    for old in (None, (old_video, old_text)):
        video, text = train_free_embeddings(old, form)
        assert cross_top1(text, video) == 1.0  # new-new: the task is learned either way
        new_text_old_video, old_text_new_video = cross_top1(text, old_video), cross_top1(old_text, video)
        cosines = item_cosine(video, old_video), item_cosine(text, old_text)
        if old is None:  # independently trained spaces do not align: cross-model search is chance
            assert max(new_text_old_video, old_text_new_video) <= 3 * chance
            assert max(abs(c) for c in cosines) < 0.2
        else:
            assert min(new_text_old_video, old_text_new_video) == 1.0
            if form == "cross_align":  # each item also lands near its old embedding (cross alone: about 0.85)
                assert min(cosines) > 0.9
