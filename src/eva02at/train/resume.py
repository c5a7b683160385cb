"""Resume points: one per run configuration, each with the newest save and the one before it as fallback.

A training keeps its state under ``<checkpoints>/<fingerprint>/``, the first digits of the digest of what
defines the run, so that a run with other params (an lr probe) never overwrites an interrupted run's state;
each folder holds the newest save (``checkpoint.pt``) and the save before it (``previous.pt``), which a run
resumes from when the newest cannot be read (cut short by a full disk, a copy, a bad sector). This layout and
its fallback rule are the project's own; the files are the models' checkpoint format (``eva02at.models``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from eva02at.core.errors import PipelineError
from eva02at.models import CheckpointError, load_checkpoint_file

log = logging.getLogger(__name__)
FINGERPRINT_DIGITS = 16  # of the run fingerprint's hex digest in a resume point's folder name
NEWEST, PREVIOUS = "checkpoint.pt", "previous.pt"


class ForeignCheckpoint(PipelineError):
    """A resume point belongs to another run configuration: resuming from it or overwriting it is refused."""


def resume_point(checkpoints: str | os.PathLike, fingerprint: str) -> Path:
    """The newest save of the run ``fingerprint`` under the stage's ``checkpoints`` folder."""
    return Path(checkpoints) / fingerprint[:FINGERPRINT_DIGITS] / NEWEST


def fallback(checkpoint: Path) -> Path:
    """Where the save before ``checkpoint`` is kept."""
    return checkpoint.with_name(PREVIOUS if checkpoint.name == NEWEST else f"{checkpoint.stem}.previous.pt")


def keep_as_fallback(checkpoint: Path) -> None:
    """Before a save: the newest save becomes the fallback (a rename, atomic), so that a save cut short by a
    full disk or a kill leaves the last good state beside it."""
    if checkpoint.is_file():
        os.replace(checkpoint, fallback(checkpoint))


def load_resume_point(checkpoint: Path, fingerprint: str) -> dict | None:
    """The checkpoint dict to resume the run ``fingerprint`` from, ``None`` when there is none yet.

    The newest save when it reads, else the fallback (logged: which file and why). A file of another run
    configuration is a ForeignCheckpoint; a newest save that does not read, without a readable fallback, is
    the CheckpointError naming it.
    """
    candidates = [path for path in (checkpoint, fallback(checkpoint)) if path.is_file()]
    first_error: CheckpointError | None = None
    for path in candidates:
        try:
            data = load_checkpoint_file(path)
        except CheckpointError as err:
            log.warning("cannot resume from %s: %s", path, err)
            first_error = first_error or err
            continue
        _check_owner(path, data.get("extra", {}), fingerprint)
        if path != checkpoint:
            log.warning("resuming from the fallback %s: the newest save %s does not read (removed)", path, checkpoint)
            checkpoint.unlink(missing_ok=True)  # so that the next save keeps this good file as the fallback
        return {**data, "path": path}
    if first_error is not None:
        raise first_error
    return None


def resumable_state(checkpoint: Path, fingerprint: str) -> dict:
    """The loop state (``extra``) that :func:`load_resume_point` would resume the run ``fingerprint`` from, or
    {}. Cheap: tensors are memory-mapped, not read. A file that does not read counts as absent here; the
    training reports it."""
    for path in (checkpoint, fallback(checkpoint)):
        if not path.is_file():
            continue
        try:
            extra = torch.load(path, map_location="cpu", mmap=True, weights_only=True).get("extra", {})
        except Exception:  # reported by load_resume_point, which reads the file for real
            continue
        return extra if extra.get("fingerprint") == fingerprint else {}
    return {}


def _check_owner(path: Path, extra: dict, fingerprint: str) -> None:
    owner = extra.get("fingerprint")
    if owner != fingerprint:
        raise ForeignCheckpoint(
            f"{path} holds the resume point of another run configuration ({str(owner)[:FINGERPRINT_DIGITS]}, this "
            f"run is {fingerprint[:FINGERPRINT_DIGITS]}); it is neither resumed nor overwritten: give this run its "
            "own folder (resume_point) or move the file away"
        )
