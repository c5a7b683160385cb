"""The one training loop behind image-CLIP training, pretraining and fine-tuning.

One process per device (torchrun for several; DDP), bf16 autocast on GPU and float32 on the CPU,
gradient accumulation, seeded data order, checkpoints every N optimizer steps that hold everything needed
to continue exactly (model, optimizer, scheduler, RNG states, data position), and a hard stop on a
non-finite loss that leaves the last good checkpoint in place.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from eva02at.config import ConfigError, NonNegativeInt, PositiveInt
from eva02at.errors import PipelineError
from eva02at.models import load_checkpoint_file
from eva02at.train.data import ClipPairs, EpochBatches, collate
from eva02at.train.distributed import DistInfo
from eva02at.train.optim import OptimConfig, build_optimizer, build_scheduler
from eva02at.train.sampling import RelevantPairSampler
from eva02at.train.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: PositiveInt = 1
    batch_size: PositiveInt = 8  # per process; the global batch is batch_size * processes * accum_steps
    accum_steps: PositiveInt = 1
    seed: NonNegativeInt = 0
    workers: NonNegativeInt = 2  # data loader processes per training process
    checkpoint_every: PositiveInt = 100  # optimizer steps
    log_every: PositiveInt = 10
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, float32 on CPU
    grad_checkpointing: bool = False
    compile: bool = False
    stop_after_steps: NonNegativeInt = 0  # stop early without changing the schedule (0: train every epoch)


class NonFiniteLoss(PipelineError):
    """The loss became NaN or infinite; names the step and the batch."""


@dataclass
class TrainResult:
    steps: int
    history: list[dict] = field(default_factory=list)  # one row per logged optimizer step


def train(
    task: Task,
    sampler: RelevantPairSampler,
    dataset: ClipPairs,
    config: TrainConfig,
    optim: OptimConfig,
    checkpoint: Path,
    dist: DistInfo,
    fingerprint: str,
    on_log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``task.model`` on the batches of ``sampler`` (a resumable pair sampler) over ``dataset``.

    A checkpoint whose ``fingerprint`` (a digest of everything that defines the run) matches is resumed from;
    any other is ignored with a warning and overwritten at the next save.
    """
    torch.manual_seed(config.seed)
    model = task.model.to(dist.device)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    optimizer = build_optimizer(model, optim)
    steps_per_epoch = sampler.steps_per_epoch // config.accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(
            f"an epoch has {sampler.steps_per_epoch} batches, fewer than accum_steps={config.accum_steps}"
        )
    total_steps = config.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, total_steps, steps_per_epoch, optim)
    state = _resume(checkpoint, fingerprint, task, optimizer, scheduler)
    step, history = state.get("step", 0), list(state.get("history", []))
    stop = min(total_steps, config.stop_after_steps or total_steps)
    wrapped = DistributedDataParallel(model) if dist.world_size > 1 else model
    if config.compile:
        wrapped = torch.compile(wrapped)
    autocast = _autocast(config.precision, dist.device)
    global_batch = config.batch_size * dist.world_size * config.accum_steps
    desc = f"train {checkpoint.parent.name}"
    bar = tqdm(total=stop, initial=step, unit="step", disable=dist.rank != 0, desc=desc)
    window_start, window_steps = time.perf_counter(), 0
    while step < stop:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, start_step=offset * config.accum_steps)
        loader = DataLoader(
            dataset,
            batch_sampler=EpochBatches(sampler, epoch),
            collate_fn=collate,
            num_workers=config.workers,
            pin_memory=dist.device.type == "cuda",
        )
        model.train()
        for micro, batch in enumerate(loader):
            last = (micro + 1) % config.accum_steps == 0
            sync = contextlib.nullcontext() if last or dist.world_size == 1 else wrapped.no_sync()
            with sync:
                with autocast:
                    loss = task.loss(wrapped, batch, dist.device)
                value = loss.item()
                if not np.isfinite(value):
                    raise NonFiniteLoss(
                        f"loss is {value} at optimizer step {step + 1} (epoch {epoch}, batch "
                        f"{offset * config.accum_steps + micro} of the epoch, videos "
                        f"{batch['videos'][:8].tolist()}...); the last good checkpoint {checkpoint} is kept"
                    )
                (loss / config.accum_steps).backward()
            if not last:
                continue
            if optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, window_steps = step + 1, window_steps + 1
            bar.update(1)
            if step % config.log_every == 0 or step == stop:
                elapsed = time.perf_counter() - window_start
                row = {
                    "step": step,
                    "epoch": epoch,
                    "loss": value,
                    "lr": scheduler.get_last_lr()[0],
                    "clips_per_s": window_steps * global_batch / max(elapsed, 1e-9),
                }
                history.append(row)
                bar.set_postfix(loss=f"{value:.4f}", clips_s=f"{row['clips_per_s']:.1f}")
                if on_log is not None and dist.rank == 0:
                    on_log(row)
                window_start, window_steps = time.perf_counter(), 0
            if dist.rank == 0 and (step % config.checkpoint_every == 0 or step == stop):
                _save(checkpoint, task, optimizer, scheduler, step, history, fingerprint)
            if step >= stop:
                break
    bar.close()
    return TrainResult(step, history)


def _autocast(precision: str, device: torch.device):
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _save(path: Path, task: Task, optimizer, scheduler, step: int, history: list, fingerprint: str) -> None:
    """Atomically write the training state: the model's own checkpoint format, loop state in ``extra``."""
    extra = {
        "fingerprint": fingerprint,
        "step": step,
        "history": history,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    task.save(path, extra)


def _resume(path: Path, fingerprint: str, task: Task, optimizer, scheduler) -> dict:
    if not path.is_file():
        return {}
    data = load_checkpoint_file(path)
    extra = data.get("extra", {})
    if extra.get("fingerprint") != fingerprint:
        log.warning("%s was written by a different run configuration; starting from scratch", path)
        return {}
    task.model.load_state_dict(data["state_dict"])
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    _set_rng_state(extra["rng"])
    log.info("resuming from %s at optimizer step %d", path, extra["step"])
    return extra


def _rng_state() -> dict:
    version, keys, gauss = random.getstate()
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": [version, list(keys), gauss],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
