"""Relevance-aware pair sampling for EK100 fine-tuning.

Each epoch visits the training videos in a fresh random order and pairs every video with one caption drawn
uniformly among the sentences relevant to it (R > threshold), so a video learns from every narration that
describes it equally well, not only its own. The sampler yields (video, caption) index pairs: after the
embeddings of a global batch are gathered, the trainer rebuilds its B x B soft labels from the full relevancy
matrix with the gathered indices.

Everything random is a pure function of (seed, epoch): the video order and one uniform number per position.
Step s of an epoch is therefore reproducible on its own, which is what makes resuming exact, and the global
batch does not depend on how it is split over ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch.utils.data

from eva02at.core.config import ConfigError
from eva02at.core.errors import BadInput


class CandidateSource(Protocol):
    """What the sampler needs from the relevancy table (:class:`eva02at.data.labels.RelevancyTable` fits)."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def candidates(self, video_idx: int, threshold: float = 0.1) -> np.ndarray: ...


class RelevantPairSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Batch sampler of (video index, caption index) pairs, sharded over distributed ranks.

    A global batch of ``batch_size * world_size`` consecutive positions of the epoch's video order is split
    into ``world_size`` contiguous slices; rank r gets slice r, so gathering the ranks' indices in rank order
    gives back the global batch. The last incomplete global batch of an epoch is dropped (gathered tensors
    must have equal sizes on all ranks); the next epoch's order is fresh, so no video is dropped for good.

    Use it as a DataLoader ``batch_sampler``: the dataset then receives each ``(video, caption)`` tuple.
    Call :meth:`set_epoch` before iterating, with ``start_step`` to resume inside an epoch.
    """

    def __init__(
        self,
        table: CandidateSource,
        batch_size: int,
        *,
        seed: int = 0,
        threshold: float = 0.1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.table, self.batch_size, self.seed, self.threshold = table, batch_size, seed, threshold
        self.rank, self.world_size = rank, world_size
        self.num_videos = table.shape[0]
        self.steps_per_epoch = self.num_videos // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{self.num_videos} videos cannot fill one global batch of {batch_size} x {world_size} ranks"
            )
        self.epoch, self.start_step = 0, 0
        self._plan: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, order, uniforms)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch ``epoch`` from step ``start_step`` (steps already trained are skipped)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is outside 0..{self.steps_per_epoch}")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.steps_per_epoch):
            yield [(int(v), int(c)) for v, c in self.batch(self.epoch, step)]

    def batch(self, epoch: int, step: int) -> np.ndarray:
        """This rank's pairs at (epoch, step): int64 [batch_size, 2], columns (video, caption)."""
        return self._pairs(epoch, step, self.rank, self.rank + 1)

    def global_batch(self, epoch: int, step: int) -> np.ndarray:
        """The pairs of all ranks at (epoch, step), in rank order: int64 [batch_size * world_size, 2]."""
        return self._pairs(epoch, step, 0, self.world_size)

    def _pairs(self, epoch: int, step: int, first_rank: int, end_rank: int) -> np.ndarray:
        """Pairs of ranks first_rank..end_rank-1; only these captions are drawn (a draw costs ~0.1 ms)."""
        if not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"step {step} is outside 0..{self.steps_per_epoch - 1}")
        order, uniforms = self._epoch_plan(epoch)
        start = step * self.batch_size * self.world_size
        positions = slice(start + first_rank * self.batch_size, start + end_rank * self.batch_size)
        videos = order[positions]
        captions = [self._draw(int(v), float(u)) for v, u in zip(videos, uniforms[positions], strict=True)]
        return np.stack([videos, np.asarray(captions, dtype=np.int64)], axis=1)  # (ranks * batch_size, 2)

    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Video order and one uniform per position, from (seed, epoch) alone; kept for the current epoch."""
        if self._plan is None or self._plan[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._plan = (epoch, rng.permutation(self.num_videos), rng.random(self.num_videos))
        return self._plan[1], self._plan[2]

    def _draw(self, video: int, uniform: float) -> int:
        options = self.table.candidates(video, self.threshold)
        if len(options) == 0:
            ids = getattr(self.table, "video_ids", None)
            name = f"video {video}" + (f" (narration_id {ids[video]})" if ids is not None else "")
            raise BadInput(
                f"{name} has no caption with relevance above {self.threshold}; "
                "every video should at least match its own narration (R = 1)"
            )
        return int(options[min(int(uniform * len(options)), len(options) - 1)])
