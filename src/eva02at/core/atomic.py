"""Atomic outputs: a crash never leaves a half-written file that looks finished.

Everything is written to a hidden temporary sibling first and moved into place with ``os.replace``,
which is atomic on POSIX file systems when source and target share a directory. What this adds to
``tempfile``: the sibling is created with the permissions a plain ``open``/``mkdir`` gives (the process
umask, not ``mkstemp``'s 0600 or ``mkdtemp``'s 0700), so that a team sharing a machine can read the
outputs; and the data is flushed to disk (``fsync``) before the rename and the rename itself after it,
so that a power loss cannot leave a finished name on empty or partial contents. A writer killed mid-write
(SIGKILL runs no clean-up) leaves its temporary sibling behind: ``remove_leftovers`` clears them where a
rerun resumes in the same folder. A write that fails for want of space (ENOSPC, also when a library reports
it as its own error, as torch's zip writer does) is a one-line ``DiskFull`` naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from eva02at.core.errors import PipelineError

log = logging.getLogger(__name__)
TEMPORARY = re.compile(r"\..+\.tmp-[0-9a-f]{16}")  # the names atomic_path gives its temporary siblings


class DiskFull(PipelineError):
    """An output could not be written for want of space; nothing was left in its place."""


def out_of_space(err: BaseException) -> bool:
    """Whether ``err`` or an error it was raised from or during is ENOSPC (disk full) or EDQUOT (quota)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(8)}"
    if directory:
        tmp.mkdir(mode=0o777)  # less the umask, as for any new folder
    else:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # less the umask, as for any new file
    try:
        yield tmp
        _sync_tree(tmp)
        if directory and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        _fsync(target.parent)  # makes the rename itself durable
    except BaseException as err:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if out_of_space(err):
            free = shutil.disk_usage(target.parent).free
            raise DiskFull(
                f"{target}: no space left on its file system ({free / 2**20:.1f} MiB free) while writing it; "
                "nothing was left in its place: free space or move the output elsewhere, then rerun",
            ) from err
        raise


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary siblings that killed writers left in ``folder`` and return them. Only for a folder no
    other process writes into at the time: a stage's own output or checkpoint folder, before its workers start."""
    folder = Path(folder)
    found = sorted(p for p in folder.iterdir() if TEMPORARY.fullmatch(p.name)) if folder.is_dir() else []
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if found:
        names = ", ".join(path.name for path in found)
        log.warning("removed %d unfinished file(s) of an interrupted run from %s: %s", len(found), folder, names)
    return found


def write_text(target: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def _fsync(path: str | os.PathLike) -> None:
    """Flush one file's or folder's contents (a folder's: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(path: str | os.PathLike) -> None:
    """fsync a file, or every file and folder below a folder (symbolic links are not followed)."""
    if not Path(path).is_dir():
        _fsync(path)
        return
    for folder, _, files in os.walk(path):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _fsync(os.path.join(folder, name))
        _fsync(folder)
