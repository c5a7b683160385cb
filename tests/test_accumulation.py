"""Accumulation with the whole batch's loss: the training step over k micro-batches of b pairs (on one and on
two gloo processes) leaves the gradients of one step on the k*b pairs (all processes' pairs) in float64, for
every loss and with a frozen reference model; dropout draws the same masks in both forwards."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from eva02at.core import distributed
from eva02at.train.data import clip_frames
from eva02at.train.loop import StepSetup, train_step
from eva02at.train.losses import finetuning, get_loss, infonce  # noqa: F401  (registers their losses)
from eva02at.train.tasks import VideoTextTask
from tests.test_distributed import free_port

ACCUM, MICRO, WORLD = 3, 4, 2  # k micro-batches of b pairs per process
FRAMES, SIZE, CONTEXT, WIDTH = 2, 4, 5, 6
VIDEOS, SENTENCES = 40, 40
LOSS_NAMES = ("infonce", "sms", "adaptive_mi_mm", "mi_mm", "sms+reference")


class TinyTowers(nn.Module):
    """A stand-in VideoCLIP in float64: one linear map per tower, dropout on the video input."""

    image_size = SIZE
    image_mean = (0.5, 0.4, 0.3)
    image_std = (0.2, 0.25, 0.3)
    tokenizer = None

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.video = nn.Linear(FRAMES * 3 * SIZE * SIZE, WIDTH).double()
        self.text = nn.Linear(CONTEXT, WIDTH).double()
        self.dropout = nn.Dropout(dropout)

    def forward(self, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.video(self.dropout(frames.double().flatten(1))), self.text(tokens.double())


class Lookup:
    """The relevancy table's interface over a dense matrix."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = matrix

    def lookup(self, videos, captions):
        return self.matrix[np.ix_(videos, captions)]


class Frozen:
    """A frozen earlier model (compatible fine-tuning's reference)."""

    weight = 0.5
    form = "cross_align"  # both cross pairs and the alignment: every part of the term is accumulated

    def __init__(self) -> None:
        torch.manual_seed(7)
        self.model = TinyTowers().eval().requires_grad_(False)

    def embed(self, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.model(frames, tokens)

    def record(self) -> dict:
        return {}


def task_for(name: str, model: nn.Module) -> VideoTextTask:
    relevancy = Lookup(np.random.default_rng(3).integers(0, 5, (VIDEOS, SENTENCES)) / 4)
    loss = get_loss(name.removesuffix("+reference"))
    return VideoTextTask(model, loss, relevancy, Frozen() if name.endswith("+reference") else None)


def global_batch(size: int) -> dict:
    """``size`` seeded pairs as the loader hands them over: uint8 frames, tokens, (video, caption) indices."""
    generator = torch.Generator().manual_seed(11)
    return {
        "frames": torch.randint(0, 256, (size, FRAMES, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8),
        "tokens": torch.randint(0, 50, (size, CONTEXT), generator=generator),
        "videos": torch.randperm(VIDEOS, generator=generator)[:size],
        "captions": torch.randint(0, SENTENCES, (size,), generator=generator),
        "epoch": 0,
    }


def rows(batch: dict, start: int, stop: int) -> dict:
    return {key: value if key == "epoch" else value[start:stop] for key, value in batch.items()}


class KeepGradients(torch.optim.Optimizer):
    """An optimizer whose step only copies the gradients the training step accumulated."""

    def __init__(self, params) -> None:
        super().__init__(list(params), {})
        self.grads: list[torch.Tensor] = []

    def step(self, closure=None) -> None:
        self.grads = [p.grad.clone() for group in self.param_groups for p in group["params"]]


def step_gradients(forward: nn.Module, task: VideoTextTask, micro_batches: list[dict], whole: bool) -> list:
    optimizer = KeepGradients(task.model.parameters())
    setup = StepSetup(torch.device("cpu"), "fp32", whole_batch=whole)
    train_step(forward, task, micro_batches, optimizer, setup)
    return optimizer.grads


def one_step_gradients(name: str, batch: dict) -> list[torch.Tensor]:
    """The independent reference: one step of one process on the whole batch, no accumulation."""
    torch.manual_seed(0)
    model = TinyTowers()
    return step_gradients(model, task_for(name, model), [batch], whole=True)


def assert_same_gradients(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_accumulated_gradients_are_those_of_the_whole_batch(name):
    batch = global_batch(ACCUM * MICRO)
    torch.manual_seed(0)
    model = TinyTowers()
    micro = [rows(batch, j * MICRO, (j + 1) * MICRO) for j in range(ACCUM)]
    accumulated = step_gradients(model, task_for(name, model), micro, whole=True)
    expected = one_step_gradients(name, batch)
    assert_same_gradients(accumulated, expected)
    # each micro-batch's own loss (the other setting) is another objective: its gradients differ
    separate = step_gradients(model, task_for(name, model), micro, whole=False)
    assert max((a - b).abs().max() for a, b in zip(separate, expected, strict=True)) > 1e-4


def test_the_second_forward_draws_the_first_forwards_dropout():
    """The reference draws the micro-batches' dropout masks in the order the cached pass does, all with
    gradients: only a re-forward that replays those masks gives the same gradients."""
    batch = global_batch(ACCUM * MICRO)
    micro = [rows(batch, j * MICRO, (j + 1) * MICRO) for j in range(ACCUM)]
    torch.manual_seed(0)
    model = TinyTowers(dropout=0.5)
    task = task_for("sms", model)
    torch.manual_seed(5)
    accumulated = step_gradients(model, task, micro, whole=True)
    torch.manual_seed(5)
    embeddings = []
    for part in micro:
        frames = clip_frames(part, torch.device("cpu"), SIZE, model.image_mean, model.image_std)
        embeddings.append(model(frames, part["tokens"]))
    video, text = (torch.cat(parts) for parts in zip(*embeddings, strict=True))
    model.zero_grad()
    task.batch_loss(video, text, batch, None).backward()
    assert_same_gradients(accumulated, [p.grad for p in model.parameters()])


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.setup()
    try:
        batch = global_batch(WORLD * ACCUM * MICRO)
        first = rank * ACCUM * MICRO
        micro = [rows(batch, first + j * MICRO, first + (j + 1) * MICRO) for j in range(ACCUM)]
        results = {}
        for name in LOSS_NAMES:
            torch.manual_seed(0)
            model = TinyTowers()
            results[name] = step_gradients(DistributedDataParallel(model), task_for(name, model), micro, whole=True)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


def test_two_processes_accumulating_give_the_gradients_of_the_global_batch(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    batch = global_batch(WORLD * ACCUM * MICRO)
    for name in LOSS_NAMES:
        expected = one_step_gradients(name, batch)
        for result in ranks:
            assert_same_gradients(result[name], expected)
