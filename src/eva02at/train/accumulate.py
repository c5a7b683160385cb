"""The gradients of one optimizer step over several micro-batches (``train.accum_steps``).

Contrastive and margin losses compare every pair of a batch with every other, so a step that reaches its
batch by accumulation trains the paper's objective only when the loss sees the whole accumulated batch
(``train.accum_whole_batch``, the default). That is done with cached features, as open_clip's ``accum_freq``
and GradCache do, and as the authors' fine-tuning code does:

1. every micro-batch is embedded without gradients, and the torch RNG state before it is kept;
2. the loss of the whole batch (all micro-batches, gathered over all processes) is back-propagated to those
   cached embeddings only;
3. each micro-batch is embedded again with gradients, from the same inputs and RNG state (the same crops,
   the same dropout), and its embeddings are back-propagated with the gradients step 2 left on its rows.

The parameter gradients are then exactly those of one step on the whole batch: the loss is a function of the
embeddings, and each micro-batch's embeddings depend on the parameters only through its own forward. Written
here because neither open_clip (whose version lives inside its training loop) nor GradCache is a library this
loop can call; the cost is one more forward per micro-batch (BENCHMARKS.md, training step). Without
``accum_whole_batch`` every micro-batch has its own loss over its own pairs and the step averages them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from eva02at.train.tasks import Task

# (frames (B, T, 3, S, S), tokens (B, L), the loader batch with its (video, caption) indices), on the device
ModelInputs = tuple[torch.Tensor, torch.Tensor, dict]


def micro_batch_gradients(
    forward: nn.Module, task: Task, inputs: Iterable[ModelInputs], count: int, autocast
) -> torch.Tensor:
    """Accumulate the gradient of the mean of ``count`` micro-batch losses; returns the losses (count,)."""
    losses = []
    for index, (frames, tokens, batch) in enumerate(inputs):
        with _sync_on_last(forward, index == count - 1):
            with autocast:
                loss = task.loss(forward, frames, tokens, batch)
            (loss / count).backward()
        losses.append(loss.detach().float())
    return torch.stack(losses)


def whole_batch_gradients(
    forward: nn.Module, task: Task, inputs: Iterable[ModelInputs], count: int, autocast, device: torch.device
) -> torch.Tensor:
    """Accumulate the gradient of the loss of all ``count`` micro-batches together (see the module doc);
    returns that loss once per micro-batch (count,). Keeps every micro-batch's model inputs until the end."""
    kept, states, embeddings, frozen = [], [], [], []
    with torch.no_grad():
        for frames, tokens, batch in inputs:
            states.append(_rng_state(device))
            with autocast:
                embeddings.append(task.embed(forward, frames, tokens))
                frozen.append(task.frozen(frames, tokens))
            kept.append((frames, tokens, batch))
    video, text = (torch.cat(parts).requires_grad_() for parts in zip(*embeddings, strict=True))
    whole = {key: torch.cat([batch[key] for _, _, batch in kept]) for key in ("videos", "captions")}
    old = None if frozen[0] is None else tuple(torch.cat(parts) for parts in zip(*frozen, strict=True))
    with autocast:
        loss = task.batch_loss(video, text, whole, old)
    loss.backward()  # to the cached embeddings only: they are leaves
    sizes = [len(frames) for frames, _, _ in kept]
    rows = zip(video.grad.split(sizes), text.grad.split(sizes), strict=True)
    for index, ((frames, tokens, _), state, grads) in enumerate(zip(kept, states, rows, strict=True)):
        with _sync_on_last(forward, index == count - 1):
            with _replayed_rng(state, device), autocast:
                again = task.embed(forward, frames, tokens)
            torch.autograd.backward(again, grads)
    return loss.detach().float().repeat(count)


def _sync_on_last(forward: nn.Module, last: bool):
    """DDP: all-reduce the gradients with the last micro-batch's backward only."""
    no_sync = getattr(forward, "no_sync", None)
    return contextlib.nullcontext() if last or no_sync is None else no_sync()


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The torch RNG states a forward on ``device`` draws from (dropout, drop path)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextlib.contextmanager
def _replayed_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> Iterator[None]:
    """Run the block from the RNG ``state``, leaving the RNG as it was before it."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield
