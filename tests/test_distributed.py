"""Two CPU processes (gloo) computing the global-batch loss match one process on the whole batch, with and
without a frozen reference model (compatible fine-tuning)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from eva02at.core import distributed
from eva02at.train import tasks
from eva02at.train.losses import get_loss

WORLD, LOCAL_BATCH, VIDEOS, SENTENCES = 2, 4, 12, 10
LOSS_NAMES = ("sms", "infonce", "sms+reference")


class TwoTowers(torch.nn.Module):
    """Stand-in for the video and text encoders: one linear map each."""

    def __init__(self) -> None:
        super().__init__()
        self.video = torch.nn.Linear(6, 4)
        self.text = torch.nn.Linear(5, 4)

    def forward(self, video: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.video(video), self.text(text)


def problem():
    """Model, global batch (features and (video, caption) indices) and full relevancy matrix, all seeded."""
    torch.manual_seed(0)
    model = TwoTowers().double()
    pairs = torch.stack(
        [torch.randperm(VIDEOS)[: WORLD * LOCAL_BATCH], torch.randint(0, SENTENCES, (WORLD * LOCAL_BATCH,))],
        1,
    )
    video_features = torch.randn(VIDEOS, 6, dtype=torch.float64)
    sentence_features = torch.randn(SENTENCES, 5, dtype=torch.float64)
    relevancy = torch.randint(0, 5, (VIDEOS, SENTENCES)).double() / 4
    return model, pairs, video_features, sentence_features, relevancy


class Lookup:
    """The relevancy table's interface over the dense matrix."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix.numpy()

    def lookup(self, videos, captions):
        return self.matrix[videos][:, captions]


def frozen_reference() -> TwoTowers:
    torch.manual_seed(1)
    return TwoTowers().double().eval().requires_grad_(False)


def global_loss(name, model, pairs, video_features, sentence_features, relevancy):
    """What each rank computes: local embeddings, gathered with gradients, global soft labels, the loss; for
    ``sms+reference`` the training task's own global loss with a frozen model's embeddings of the same pairs."""
    video, text = model(video_features[pairs[:, 0]], sentence_features[pairs[:, 1]])
    if name == "sms+reference":
        video.retain_grad()
        old = frozen_reference()(video_features[pairs[:, 0]], sentence_features[pairs[:, 1]])
        batch = {"videos": pairs[:, 0], "captions": pairs[:, 1]}
        loss = tasks.global_loss(video, text, batch, get_loss("sms"), Lookup(relevancy), old, 0.5)
        return loss, video, distributed.all_gather_no_grad(pairs)
    all_pairs = distributed.all_gather_no_grad(pairs)  # (W*B, 2)
    soft = relevancy[all_pairs[:, 0]][:, all_pairs[:, 1]]  # (W*B, W*B): C[a, b] = R(video_a, caption_b)
    all_video = distributed.all_gather_with_grad(video)
    all_text = distributed.all_gather_with_grad(text)
    video.retain_grad()
    return get_loss(name)(all_video, all_text, soft), video, all_pairs


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = distributed.setup()
    try:
        model, pairs, video_features, sentence_features, relevancy = problem()
        ddp = DistributedDataParallel(model)
        local = pairs[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH]
        results = {"info": (info.rank, info.world_size, distributed.rank(), distributed.world_size())}
        for name in LOSS_NAMES:
            ddp.zero_grad()
            loss, video, all_pairs = global_loss(name, ddp, local, video_features, sentence_features, relevancy)
            loss.backward()
            results[name] = {
                "loss": loss.detach(),
                "pairs": all_pairs,
                "video_grad": video.grad,
                "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert [r["info"] for r in ranks] == [(0, 2, 0, 2), (1, 2, 1, 2)]
    model, pairs, video_features, sentence_features, relevancy = problem()
    for name in LOSS_NAMES:
        model.zero_grad()
        loss, video, _ = global_loss(name, model, pairs, video_features, sentence_features, relevancy)
        loss.backward()
        for rank, result in enumerate(ranks):
            got = result[name]
            torch.testing.assert_close(got["pairs"], pairs)
            torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-12, atol=0)
            # DDP's mean over ranks turns the gathered gradients into exactly the global-batch gradient ...
            for key, param in model.named_parameters():
                torch.testing.assert_close(got["grads"][key], param.grad, rtol=1e-10, atol=1e-14)
            # ... because each rank's own embeddings receive the sum over ranks: world size x dL/dx.
            local_grad = video.grad[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH]
            torch.testing.assert_close(got["video_grad"], WORLD * local_grad, rtol=1e-10, atol=1e-14)


def test_single_process_helpers_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.setup()
    assert (info.rank, info.world_size, distributed.is_distributed()) == (0, 1, False)
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_with_grad(x) is x
    idx = torch.arange(3)
    assert distributed.all_gather_no_grad(idx) is idx
    distributed.cleanup()


def test_missing_torchrun_variables_are_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match=r"MASTER_ADDR.*launch with torchrun"):
        distributed.setup()
