"""Objectives: hand-computed cases, a float64 loop reference, gradients, dtypes and the registry."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from eva02at.core.config import ConfigError, from_dict
from eva02at.train.losses import LOSSES, finetuning, get_loss, register_loss
from eva02at.train.losses.adaptive_mi_mm import adaptive_mi_mm_loss
from eva02at.train.losses.infonce import infonce_loss  # the first import of each loss module registers it
from eva02at.train.losses.mi_mm import mi_mm_loss
from eva02at.train.losses.sms import SmsParams, sms_loss

# Unit vectors giving S[a, b] = cos(text_a, video_b) = [[1, 0], [1, 0]] (both texts point at video 0).
VIDEO = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TEXT = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
# Ordered terms, text->video: (i=0,k=1) d = 1, (i=1,k=0) d = -1; video->text: (0,1) d = 0, (1,0) d = 0.


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def loop_terms(video, text, relevance):
    """Yield (d, dR) for every ordered term, written from the definition with plain float64 loops."""
    v, t, c = video.tolist(), text.tolist(), relevance.tolist()
    n = len(v)
    s = [[cosine(t[a], v[b]) for b in range(n)] for a in range(n)]  # s[a][b] = cos(text a, video b)
    for i in range(n):
        for k in range(n):
            if k != i:
                yield s[i][i] - s[i][k], c[i][i] - c[k][i]  # text i: its own video against video k
                yield s[i][i] - s[k][i], c[i][i] - c[i][k]  # video i: its own text against text k


def loop_sms(video, text, relevance, margin=0.6, threshold=0.1, lam=1.1 / 240):
    total, count, branches = 0.0, 0, set()
    for d, dr in loop_terms(video, text, relevance):
        if dr > lam:
            total, branch = total + max(0.0, dr * margin - d), "more"
        elif abs(dr) < lam:
            total, branch = total + max(0.0, abs(d) - threshold), "equal"
        else:
            total, branch = total + max(0.0, d - dr * margin), "less"
        count, branches = count + 1, branches | {branch}
    return total / count, branches


def loop_infonce(video, text, temperature):
    v, t = video.tolist(), text.tolist()
    n = len(v)
    logits = [[cosine(t[a], v[b]) / temperature for b in range(n)] for a in range(n)]
    text_to_video = sum(math.log(sum(math.exp(x) for x in logits[i])) - logits[i][i] for i in range(n))
    video_to_text = sum(math.log(sum(math.exp(logits[a][i]) for a in range(n))) - logits[i][i] for i in range(n))
    return 0.5 * (text_to_video + video_to_text) / n


def random_case(batch: int = 6, dim: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    text = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    # Few distinct labels, so exactly equal soft labels are frequent; diagonal >= off-diagonal is not assumed.
    relevance = torch.randint(0, 5, (batch, batch), generator=gen).to(torch.float64) / 4
    return video, text, relevance


def test_mi_mm_by_hand():
    # relu(0.2 - d) over d = 1, -1, 0, 0
    assert mi_mm_loss(VIDEO, TEXT).item() == pytest.approx((0 + 1.2 + 0.2 + 0.2) / 4)
    assert mi_mm_loss(3 * VIDEO, 0.5 * TEXT).item() == pytest.approx(0.4)  # cosine ignores the norms


def test_adaptive_mi_mm_by_hand():
    relevance = torch.tensor([[0.5, 0.9], [0.3, 1.0]])  # own relevances 0.5 and 1: margins 0.2 and 0.4
    expected = (0 + (0.4 + 1) + 0.2 + 0.4) / 4
    assert adaptive_mi_mm_loss(VIDEO, TEXT, relevance).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("relevance", "expected"),
    [
        # dR = 0.5 everywhere ("more relevant" branch): relu(0.3 - d)
        ([[1.0, 0.5], [0.5, 1.0]], (0 + 1.3 + 0.3 + 0.3) / 4),
        # exactly equal labels, dR = 0: relu(|d| - 0.1)
        ([[1.0, 1.0], [1.0, 1.0]], (0.9 + 0.9 + 0 + 0) / 4),
        # dR = -0.5 ("less relevant" branch): relu(d + 0.3)
        ([[0.5, 1.0], [1.0, 0.5]], (1.3 + 0 + 0.3 + 0.3) / 4),
        # asymmetric: caption 0 fits video 1 fully (C[1, 0] = 1): text 0 must not prefer video 0 to video 1
        # terms: t->v (0,1) dR = C00 - C10 = 0 -> 0.9; (1,0) dR = C11 - C01 = 1 -> relu(0.6 + 1);
        #        v->t (0,1) dR = C00 - C01 = 1 -> relu(0.6 - 0); (1,0) dR = C11 - C10 = 0 -> relu(0 - 0.1)
        ([[1.0, 0.0], [1.0, 1.0]], (0.9 + 1.6 + 0.6 + 0) / 4),
    ],
)
def test_sms_by_hand(relevance, expected):
    assert sms_loss(VIDEO, TEXT, torch.tensor(relevance)).item() == pytest.approx(expected)


def test_infonce_by_hand():
    # temperature 1: text rows [1, 0] and [1, 0] with targets 0 and 1; video rows [1, 1] and [0, 0]
    expected = 0.5 * ((math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2 + math.log(2))
    assert infonce_loss(VIDEO, TEXT, temperature=1.0).item() == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(4))
def test_sms_matches_loop_on_all_branches(seed):
    video, text, relevance = random_case(seed=seed)
    expected, branches = loop_sms(video, text, relevance)
    assert branches == {"more", "equal", "less"}
    assert sms_loss(video, text, relevance).item() == pytest.approx(expected, rel=1e-12)
    expected, _ = loop_sms(video, text, relevance, margin=0.3, threshold=0.05, lam=0.3)
    got = sms_loss(video, text, relevance, margin=0.3, threshold=0.05, lam=0.3)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_margin_losses_match_loop():
    video, text, relevance = random_case(seed=7)
    terms = list(loop_terms(video, text, relevance))
    own = [relevance[i, i].item() for i in range(6) for _ in range(10)]  # C[i, i] per term, loop order
    mi_mm = sum(max(0.0, 0.2 - d) for d, _ in terms) / len(terms)
    adaptive = sum(max(0.0, c * 0.4 - d) for (d, _), c in zip(terms, own, strict=True)) / len(terms)
    assert mi_mm_loss(video, text).item() == pytest.approx(mi_mm, rel=1e-12)
    assert adaptive_mi_mm_loss(video, text, relevance).item() == pytest.approx(adaptive, rel=1e-12)


def test_infonce_matches_loop():
    video, text, _ = random_case(seed=2)
    assert infonce_loss(video, text).item() == pytest.approx(loop_infonce(video, text, 0.05), rel=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_match_finite_differences(name):
    video, text, relevance = random_case(batch=5, dim=4, seed=11)
    loss = get_loss(name)
    inputs = (video.requires_grad_(), text.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, t: loss(v, t, relevance), inputs)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bf16_inputs_computed_in_float32(name):
    video, text, relevance = random_case(batch=8, dim=16, seed=5)
    loss = get_loss(name)
    low_v, low_t = video.bfloat16(), text.bfloat16()
    got = loss(low_v, low_t, relevance)
    assert got.dtype == torch.float32
    assert got.item() == loss(low_v.float(), low_t.float(), relevance).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(low_v.float(), low_t.float(), relevance).item() == got.item()


def test_registry_binds_parameters_and_checks_them():
    video, text, relevance = random_case(seed=1)
    sms = get_loss("sms", margin=0.5, threshold=0.2)
    assert sms(video, text, relevance).item() == sms_loss(video, text, relevance, margin=0.5, threshold=0.2).item()
    assert get_loss("mi_mm")(video, text, None).item() == mi_mm_loss(video, text).item()
    assert get_loss("infonce", temperature=0.1)(video, text).item() == infonce_loss(video, text, 0.1).item()
    with pytest.raises(ValueError, match="unknown loss 'triplet'"):
        get_loss("triplet")
    with pytest.raises(ValueError, match=r"^loss sms.temperature: unknown key; known keys are \['lam', 'margin', "):
        get_loss("sms", temperature=0.1)
    with pytest.raises(ValueError, match=r"^loss mi_mm.margin = -0.1: Input should be greater than or equal to 0"):
        get_loss("mi_mm", margin=-0.1)
    with pytest.raises(ValueError, match="needs the batch relevance"):
        get_loss("adaptive_mi_mm")(video, text, None)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="B >= 2"):
        infonce_loss(torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="relevance must be"):
        sms_loss(VIDEO, TEXT, torch.ones(3, 3))


def test_a_losses_params_dataclass_must_match_its_keyword_arguments():
    def hinge(video: torch.Tensor, text: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
        return video.sum() * margin

    with pytest.raises(ValueError, match=r"SmsParams has fields \['margin', 'threshold', 'lam'\], .* \['margin'\]"):
        register_loss("hinge", SmsParams)(hinge)
    with pytest.raises(ValueError, match="registered twice"):
        register_loss("sms", SmsParams)(sms_loss)
    assert "hinge" not in LOSSES


def test_the_finetuning_losses_section_checks_each_entry_and_keeps_it_as_written():
    assert finetuning.CHOICES == ("adaptive_mi_mm", "mi_mm", "sms")  # InfoNCE is for pretraining
    section = from_dict(finetuning.LossesParams, {"sms": {"margin": 0.3}}, "losses")
    assert dataclasses.asdict(section) == {"adaptive_mi_mm": {}, "mi_mm": {}, "sms": {"margin": 0.3}}  # no defaults
    with pytest.raises(ConfigError, match=r"^losses.sms.margn: unknown key; known keys are \['lam', 'margin', 'thr"):
        from_dict(finetuning.LossesParams, {"sms": {"margn": 0.3}}, "losses")
    with pytest.raises(ConfigError, match=r"^losses.infonce: unknown key; known keys are \['adaptive_mi_mm', 'mi_mm'"):
        from_dict(finetuning.LossesParams, {"infonce": {}}, "losses")
