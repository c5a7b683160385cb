"""Clip crops: torchvision's RandomResizedCrop boxes, drawn from (seed, epoch, clip), resized as Pillow does."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from eva02at.train.augment import AugmentParams, centre_box, crop_box, crop_boxes, crop_resize

CONFIG = AugmentParams(scale=(0.5, 1.0), ratio=(0.75, 4 / 3))


def box_statistics(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """Area fraction, aspect ratio and centre position of (top, left, h, w) boxes."""
    top, left, h, w = boxes.T.astype(float)
    return {
        "area": h * w / (height * width),
        "aspect": w / h,
        "centre_y": (top + h / 2) / height,
        "centre_x": (left + w / 2) / width,
    }


@pytest.mark.parametrize(("height", "width"), [(224, 298), (64, 64)])
def test_boxes_follow_torchvision_random_resized_crop(height, width):
    draws = 10000  # enough to tell a log-uniform aspect ratio from a uniform one
    ours = np.array([crop_box(height, width, CONFIG, 0, 0, clip) for clip in range(draws)])
    torch.manual_seed(0)
    image = torch.empty(3, height, width)
    theirs = np.array(
        [RandomResizedCrop.get_params(image, list(CONFIG.scale), list(CONFIG.ratio)) for _ in range(draws)]
    )
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    for name, values in box_statistics(ours, height, width).items():
        reference = box_statistics(theirs, height, width)[name]
        assert ks_2samp(values, reference).pvalue > 1e-3, name
    # the fallback (no try fitted) happens as often: full-height boxes at the widest allowed ratio
    fallback = (h == height) & (w == min(width, round(height * CONFIG.ratio[1])))
    reference_fallback = (theirs[:, 2] == height) & (theirs[:, 3] == min(width, round(height * CONFIG.ratio[1])))
    assert abs(fallback.mean() - reference_fallback.mean()) < 0.03


def test_a_scale_range_bounds_the_area():
    narrow = AugmentParams(scale=(0.25, 0.3), ratio=(1.0, 1.0))
    boxes = np.array(crop_boxes(range(500), 3, 100, 160, narrow, seed=5))
    area = boxes[:, 2] * boxes[:, 3] / (100 * 160)
    assert (boxes[:, 2] == boxes[:, 3]).all()  # ratio 1: squares
    assert area.min() > 0.24 and area.max() < 0.31 and area.std() > 0.01


def _boxes_in_fresh_process(queue) -> None:
    queue.put([crop_box(224, 298, CONFIG, 7, epoch, clip) for epoch in range(3) for clip in range(50)])


def test_boxes_are_a_function_of_seed_epoch_and_clip_alone():
    here = [crop_box(224, 298, CONFIG, 7, epoch, clip) for epoch in range(3) for clip in range(50)]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state shared with this one
    queue = context.Queue()
    process = context.Process(target=_boxes_in_fresh_process, args=(queue,))
    process.start()
    there = queue.get()
    process.join()
    assert there == here
    assert crop_boxes([3, 1, 3], 2, 224, 298, CONFIG, 7) == [here[103], here[101], here[103]]
    other_epoch = [crop_box(224, 298, CONFIG, 7, 3, clip) for clip in range(50)]
    other_seed = [crop_box(224, 298, CONFIG, 8, 0, clip) for clip in range(50)]
    assert sum(a != b for a, b in zip(here[:50], other_epoch, strict=True)) > 45
    assert sum(a != b for a, b in zip(here[:50], other_seed, strict=True)) > 45


def pillow_crop_resize(frame: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Independent reference: crop, then Pillow's antialiased bilinear resize; per channel in float for float
    frames, as an RGB image (rounded to integers) for uint8 ones. ``frame``: (3, H, W)."""
    top, left, h, w = box
    crop = np.ascontiguousarray(frame[:, top : top + h, left : left + w])
    if frame.dtype == np.uint8:
        return np.asarray(Image.fromarray(crop.transpose(1, 2, 0)).resize((size, size), Image.BILINEAR)).transpose(
            2, 0, 1
        )
    channels = [np.asarray(Image.fromarray(c, mode="F").resize((size, size), Image.BILINEAR)) for c in crop]
    return np.stack(channels)  # (3, size, size)


@pytest.mark.parametrize("dtype", [torch.float64, torch.uint8])
def test_crop_resize_matches_pillow_per_frame(dtype):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 2, 40, 56, 3), dtype=np.uint8)
    frames = torch.from_numpy(pixels).permute(0, 1, 4, 2, 3).to(dtype)  # (B, T, 3, H, W), decoder memory order
    boxes = [(3, 7, 30, 33), (0, 0, 40, 56), (10, 20, 12, 9)]  # shrink, shrink all, enlarge
    out = crop_resize(frames, boxes, 16)
    assert out.shape == (3, 2, 3, 16, 16) and out.dtype == torch.float32
    for b, box in enumerate(boxes):
        for t in range(2):
            frame = frames[b, t].numpy()
            exact = pillow_crop_resize(frame.astype(np.float32), box, 16)
            if dtype == torch.uint8:  # resized in uint8: each of the two passes rounds, as Pillow's does
                assert np.abs(out[b, t].numpy() - pillow_crop_resize(frame, box, 16)).max() <= 1
                assert np.abs(out[b, t].numpy() - exact).max() < 1
            else:
                np.testing.assert_allclose(out[b, t].numpy(), exact, atol=2e-3)


def test_without_augmentation_the_centre_square_is_cropped():
    frames = torch.randint(0, 256, (2, 3, 3, 16, 22), dtype=torch.uint8)  # stored 16 x 22, model 16
    boxes = crop_boxes([0, 1], 0, 16, 22, None, seed=0)
    assert boxes == [(0, 3, 16, 16)] * 2 == [centre_box(16, 22)] * 2
    assert torch.equal(crop_resize(frames, boxes, 16), frames[..., 3:19].float())
    square = torch.randint(0, 256, (1, 2, 3, 16, 16), dtype=torch.uint8)  # stored at the model's size
    assert torch.equal(crop_resize(square, crop_boxes([0], 0, 16, 16, None, 0), 16), square.float())
    assert centre_box(30, 20) == (5, 0, 20, 20)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="scale"):
        AugmentParams(scale=(0.8, 0.5))
    with pytest.raises(ValueError, match="scale"):
        AugmentParams(scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="seed >= 0"):
        crop_box(10, 10, CONFIG, -1, 0, 0)
    assert AugmentParams(scale=[0.5, 1.0], ratio=[0.75, 1.3333]).ratio == (0.75, 1.3333)  # lists from YAML
