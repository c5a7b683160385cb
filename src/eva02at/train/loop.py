"""The one training loop behind image-CLIP training, pretraining and fine-tuning.

One process per device (torchrun for several; DDP), bf16 autocast on GPU and float32 on the CPU,
gradient accumulation, seeded data order and crops, checkpoints every N optimizer steps that hold everything
needed to continue exactly (model, optimizer, scheduler, RNG states, data position), and a hard stop on a
non-finite loss that leaves the last good checkpoint in place.

Accumulation: an optimizer step takes ``accum_steps`` micro-batches of one epoch, by default with the loss
of the whole accumulated batch (``train.accum_whole_batch``, ``eva02at.train.accumulate``). The batches of an
epoch beyond its last whole step are not used in that epoch (as the sampler drops an incomplete global batch;
the next epoch's order is fresh), so every step has the same global batch and no gradient crosses an epoch end.

Losses stay on the device: the host reads them only at log and checkpoint points, where the first
non-finite one is reported with its step and batch, before any checkpoint could save weights it touched.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from eva02at.core.atomic import remove_leftovers
from eva02at.core.config import ConfigError, NonNegativeInt, PositiveInt
from eva02at.core.distributed import DistInfo
from eva02at.core.errors import PipelineError
from eva02at.core.workers import die_with_parent
from eva02at.train.accumulate import ModelInputs, micro_batch_gradients, whole_batch_gradients
from eva02at.train.augment import AugmentParams
from eva02at.train.data import (
    DECODE_DEVICES,
    ClipPairs,
    Collate,
    EpochBatches,
    clip_frames,
    recycle_frames,
)
from eva02at.train.optim import OptimParams, build_optimizer, build_scheduler
from eva02at.train.resume import keep_as_fallback, load_resume_point
from eva02at.train.sampling import RelevantPairSampler
from eva02at.train.selection import SelectParams
from eva02at.train.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class TrainParams:
    epochs: PositiveInt = 1
    batch_size: PositiveInt = 8  # per process; the global batch is batch_size * processes * accum_steps
    accum_steps: PositiveInt = 1
    accum_whole_batch: bool = True  # one loss over all accum_steps micro-batches (eva02at.train.accumulate)
    seed: NonNegativeInt = 0
    workers: NonNegativeInt = 2  # data loader processes per training process
    checkpoint_every: PositiveInt = 100  # optimizer steps
    log_every: PositiveInt = 10
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, float32 on CPU
    grad_checkpointing: bool = False
    compile: bool = False
    stop_after_steps: NonNegativeInt = 0  # stop early without changing the schedule (0: train every epoch)
    augment: AugmentParams | None = None  # RandomResizedCrop per clip; None: the centred square
    decode_device: Literal["cpu", "cuda"] = "cpu"  # cpu: loader workers decode; cuda: the GPU decodes JPEG batches
    select: SelectParams | None = None  # best-epoch selection (train.selection); None: the final weights


class NonFiniteLoss(PipelineError):
    """The loss became NaN or infinite; names the step and the batch."""


@dataclass
class TrainResult:
    steps: int
    history: list[dict] = field(default_factory=list)  # one row per logged optimizer step


@dataclass(frozen=True)
class StepSetup:
    """What a step needs besides the model and the batches: where it runs, in which precision, the crops."""

    device: torch.device
    precision: str = "auto"
    grad_clip: float = 0.0
    augment: AugmentParams | None = None
    seed: int = 0
    whole_batch: bool = True  # under accumulation, one loss over all micro-batches


def train_step(
    forward: nn.Module, task: Task, micro_batches: Sequence[dict], optimizer: torch.optim.Optimizer, setup: StepSetup
) -> torch.Tensor:
    """One optimizer step over ``micro_batches`` (loader batches): model inputs made on the device, forward
    through ``forward`` (the model, or its DDP / compiled wrapper), the loss back-propagated (that of the
    whole accumulated batch, or the mean of the micro-batches' losses: ``eva02at.train.accumulate``), the
    gradients clipped when asked, the optimizer stepped. Returns the micro-batch losses (n,) on the device,
    unread, so that the host never waits for the device here. ``bench/train_step.py`` times this function.
    """
    autocast = _autocast(setup.precision, setup.device)
    inputs = (_model_inputs(batch, task, setup) for batch in micro_batches)
    if setup.whole_batch and len(micro_batches) > 1:
        losses = whole_batch_gradients(forward, task, inputs, len(micro_batches), autocast, setup.device)
    else:
        losses = micro_batch_gradients(forward, task, inputs, len(micro_batches), autocast)
    if setup.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(task.model.parameters(), setup.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses


def _model_inputs(batch: dict, task: Task, setup: StepSetup) -> ModelInputs:
    """A loader batch's frames (cropped, normalised) and tokens on the device; its frame buffer handed back."""
    frames = clip_frames(batch, setup.device, task.image_size, task.mean, task.std, setup.augment, setup.seed)
    recycle_frames(batch)  # the worker may write the next batch into the same shared memory
    return frames, batch["tokens"].to(setup.device, non_blocking=True), batch


@dataclass
class _Pending:
    """An optimizer step whose losses the host has not looked at yet."""

    step: int
    epoch: int
    first_batch: int  # index in the epoch of its first micro-batch
    losses: torch.Tensor  # (accum_steps,) on the device
    videos: list[torch.Tensor]  # per micro-batch, to name them if a loss is bad


class _Monitor:
    """The host's view of training: losses read once per log or checkpoint point (and checked there), the
    history rows, the throughput of each log window, the progress bar."""

    def __init__(
        self,
        history: list[dict],
        clips_per_step: int,
        checkpoint: Path,
        clip_id: Callable[[int], str],
        on_log,
        bar: tqdm,
    ):
        self.history, self.clips_per_step, self.checkpoint = history, clips_per_step, checkpoint
        self.clip_id = clip_id  # a dataset video's id, to name a bad batch's videos
        self.on_log, self.bar = on_log, bar
        self.pending: list[_Pending] = []
        self.window_start, self.window_steps = time.perf_counter(), 0

    def add(self, step: _Pending) -> None:
        self.pending.append(step)
        self.window_steps += 1
        self.bar.update(1)

    def check(self) -> float:
        """The last step's mean loss, after checking every pending loss (the one host sync of a window); NaN
        when every step was checked before the first logged one (an epoch end with ``on_epoch_end``)."""
        if not self.pending:
            return self.history[-1]["loss"] if self.history else float("nan")
        loss = _checked_mean_loss(self.pending, self.checkpoint, self.clip_id)
        self.pending = []
        return loss

    def log(self, step: int, epoch: int, lr: float) -> None:
        row = {"step": step, "epoch": epoch, "loss": self.check(), "lr": lr}
        self.history.append(row)
        seconds = max(time.perf_counter() - self.window_start, 1e-9) / max(self.window_steps, 1)
        speed = self.clips_per_step / seconds
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", clips_s=f"{speed:.1f}")
        if self.on_log is not None:
            self.on_log({**row, "clips_per_s": speed, "seconds_per_step": seconds})
        self.window_start, self.window_steps = time.perf_counter(), 0


def train(
    task: Task,
    sampler: RelevantPairSampler,
    dataset: ClipPairs,
    config: TrainParams,
    optim: OptimParams,
    checkpoint: Path,
    dist: DistInfo,
    fingerprint: str,
    on_log: Callable[[dict], None] | None = None,
    run_id: str | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``task.model`` on the batches of ``sampler`` (a resumable pair sampler) over ``dataset``.

    ``checkpoint`` is this run's resume point (``eva02at.train.resume``): resumed from when its
    ``fingerprint`` (a digest of everything that defines the run) matches, its fallback when it does not read;
    a file of another fingerprint is refused, never overwritten. Each save keeps the one before as fallback.
    ``run_id`` (the tracking run this training belongs to) is kept in every checkpoint, so a resumed execution
    can continue that run.
    ``on_log`` (rank 0) receives each logged row with the throughput since the last one (``clips_per_s``,
    ``seconds_per_step``); the returned history leaves them out, so that it is the same for the same inputs.
    ``on_epoch_end(epoch)`` (every process; e.g. ``train.selection.BestEpoch``) runs after an epoch's last step,
    before that step's checkpoint, so that an interruption during it repeats the epoch's end, not skips it.
    """
    _check(config, dist)
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
    if dist.rank == 0:  # the only writer of the folder, before its first save
        remove_leftovers(checkpoint.parent)
    state = _resume(checkpoint, fingerprint, task, optimizer, scheduler)
    step, stop = state.get("step", 0), min(total_steps, config.stop_after_steps or total_steps)
    forward = DistributedDataParallel(model) if dist.world_size > 1 else model
    if config.compile:
        forward = torch.compile(forward)
    setup = StepSetup(
        dist.device, config.precision, optim.grad_clip, config.augment, config.seed, config.accum_whole_batch
    )
    bar = tqdm(total=stop, initial=step, unit="step", disable=dist.rank != 0, desc=f"train {checkpoint.parent.name}")
    clips_per_step = config.batch_size * dist.world_size * config.accum_steps
    monitor = _Monitor(
        list(state.get("history", [])),
        clips_per_step,
        checkpoint,
        dataset.clip_id,
        on_log if dist.rank == 0 else None,
        bar,
    )
    while step < stop:
        epoch, offset = divmod(step, steps_per_epoch)
        model.train()
        for micro_batches in _chunks(
            _epoch_loader(task, sampler, dataset, config, dist, epoch, offset), config.accum_steps
        ):
            losses = train_step(forward, task, micro_batches, optimizer, setup)
            scheduler.step()
            first_batch = (step - epoch * steps_per_epoch) * config.accum_steps
            step += 1
            monitor.add(_Pending(step, epoch, first_batch, losses, [b["videos"] for b in micro_batches]))
            save = dist.rank == 0 and (step % config.checkpoint_every == 0 or step == stop)
            if step % config.log_every == 0 or step == stop:
                monitor.log(step, epoch, scheduler.get_last_lr()[0])
            if on_epoch_end is not None and step % steps_per_epoch == 0:
                monitor.check()  # never evaluate weights that a bad loss has touched
                on_epoch_end(epoch)
            if save:
                monitor.check()  # never save weights that a bad loss has touched
                _save(checkpoint, task, optimizer, scheduler, step, monitor.history, fingerprint, run_id)
            if step >= stop:
                break
    bar.close()
    return TrainResult(step, monitor.history)


def _epoch_loader(
    task: Task,
    sampler: RelevantPairSampler,
    dataset: ClipPairs,
    config: TrainParams,
    dist: DistInfo,
    epoch: int,
    offset: int,
) -> DataLoader:
    """The loader of epoch ``epoch`` from optimizer step ``offset``: whole steps only (see the module doc)."""
    sampler.set_epoch(epoch, start_step=offset * config.accum_steps)
    steps = sampler.steps_per_epoch // config.accum_steps
    return DataLoader(
        dataset,
        batch_sampler=EpochBatches(sampler, epoch, (steps - offset) * config.accum_steps),
        collate_fn=Collate(task.tokenizer, config.decode_device),
        num_workers=config.workers,
        pin_memory=dist.device.type == "cuda",
        worker_init_fn=functools.partial(die_with_parent, os.getpid()),
    )


def _check(config: TrainParams, dist: DistInfo) -> None:
    if config.decode_device not in DECODE_DEVICES:
        raise ValueError(f"train.decode_device must be one of {DECODE_DEVICES}, got {config.decode_device!r}")
    if config.decode_device == "cuda" and dist.device.type != "cuda":
        raise ValueError(f"train.decode_device cuda needs a CUDA training device; this process trains on {dist.device}")


def _chunks(batches: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive groups of ``size`` batches (the loader's length is a multiple of ``size``)."""
    iterator = iter(batches)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _checked_mean_loss(pending: list[_Pending], checkpoint: Path, clip_id: Callable[[int], str]) -> float:
    """Read the pending steps' losses in one transfer; the last step's mean, or NonFiniteLoss naming the
    first bad micro-batch (its optimizer step, epoch, batch of the epoch and video ids, ``clip_id`` of each of the
    batch's dataset indices)."""
    values = torch.stack([p.losses for p in pending]).cpu().numpy()  # (steps, accum_steps)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, micro = bad[0]
        where = pending[row]
        videos = [clip_id(i) for i in where.videos[micro].tolist()]
        raise NonFiniteLoss(
            f"loss is {values[row, micro]} at optimizer step {where.step} (epoch {where.epoch}, batch "
            f"{where.first_batch + micro} of the epoch, videos {videos}); "
            f"the last good checkpoint {checkpoint} is kept"
        )
    return float(values[-1].mean())


def _autocast(precision: str, device: torch.device):
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _save(
    path: Path, task: Task, optimizer, scheduler, step: int, history: list, fingerprint: str, run_id: str | None
) -> None:
    """Atomically write the training state (the model's own checkpoint format, loop state in ``extra``), the
    save before it kept as fallback."""
    extra = {
        "fingerprint": fingerprint,
        "step": step,
        "history": history,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "run_id": run_id,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    keep_as_fallback(path)
    task.save(path, extra)


def _resume(path: Path, fingerprint: str, task: Task, optimizer, scheduler) -> dict:
    data = load_resume_point(path, fingerprint)
    if data is None:
        log.info("no resume point %s for this run configuration: training from step 0", path)
        return {}
    extra = data["extra"]
    task.model.load_state_dict(data["state_dict"])
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    _set_rng_state(extra["rng"])
    log.info("resuming from %s at optimizer step %d", data["path"], extra["step"])
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
