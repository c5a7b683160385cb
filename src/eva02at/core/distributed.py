"""Multi-process helpers so that every rank computes the loss of the whole global batch.

Contrastive and margin losses compare each pair with every other pair of the batch, so the ranks exchange
their embeddings (keeping gradients) and their (video, caption) indices, from which each rank rebuilds the
global soft labels. Outside torch.distributed every helper is the identity, so one code path serves both.

Gradient scale. torch's differentiable all_gather sums, in backward, the gradients every rank sends to each
slice. All ranks compute the same global loss L, so the local embeddings x_r of rank r receive W * dL/dx_r
(W ranks). DDP then averages parameter gradients: (1/W) * sum_r W * dL/dx_r * dx_r/dtheta = dL/dtheta, the
exact gradient of the global-batch loss. The loss is therefore used as is, never multiplied or divided by W.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

_TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank among ``world_size`` and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def setup(backend: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment (nccl on GPU, gloo on CPU).

    Without torchrun (WORLD_SIZE unset or 1) no group is created and the process runs alone.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return DistInfo(0, 1, 0, device)
    missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE > 1 but environment variable(s) {missing} are unset; launch with torchrun")
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def cleanup() -> None:
    """Leave the process group (no-op when running alone)."""
    if is_distributed():
        dist.destroy_process_group()


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] of every rank in rank order into [W*B, ...], differentiably.

    All ranks must pass the same shape. See the module docstring for why the loss needs no rescaling.
    """
    if not is_distributed():
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)  # (W*B, ...)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] of every rank in rank order, without gradients, returned on ``x``'s device:
    the (video, caption) indices of a batch, or the embeddings of a frozen model."""
    if not is_distributed():
        return x
    device = torch.device("cuda", torch.cuda.current_device()) if _uses_nccl() else torch.device("cpu")
    local = x.to(device).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts, dim=0).to(x.device)  # (W*B, ...)


def _uses_nccl() -> bool:
    return dist.get_backend() == dist.Backend.NCCL


def broadcast(value):
    """Rank 0's ``value`` (any picklable object) on every rank; the value itself when running alone."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
