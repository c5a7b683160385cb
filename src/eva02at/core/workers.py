"""Worker processes that die with the process that started them.

Python's process pools leave their workers running when the parent is killed with SIGKILL (no cleanup code
runs in the parent), and such orphans go on writing outputs that a rerun then meets half-done. On Linux each
worker asks the kernel for SIGKILL when its parent exits (``prctl(PR_SET_PDEATHSIG)``); workers also check
their parent before writing, which covers a parent that died before the request was made.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_parent_pid: int | None = None  # set in worker processes only


def signal_on_parent_exit(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent exits, however it exits (nothing elsewhere)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def die_with_parent(parent_pid: int, worker_id: int | None = None) -> None:
    """Make this process receive SIGKILL when ``parent_pid`` (its parent) exits: a process pool's initializer,
    or a DataLoader's ``worker_init_fn`` as ``functools.partial(die_with_parent, os.getpid())`` (which passes
    ``worker_id``, unused)."""
    global _parent_pid
    _parent_pid = parent_pid
    signal_on_parent_exit(signal.SIGKILL)
    check_parent()


def check_parent() -> None:
    """In a worker whose parent has gone, exit at once: nothing it would still write is wanted."""
    if _parent_pid is not None and os.getppid() != _parent_pid:
        os._exit(1)


def map_unordered(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn`` of each item in a pool of ``workers`` spawned processes that die with this one; results as they
    finish. ``fn`` must be a picklable top-level function."""
    context = get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        futures = [pool.submit(fn, item) for item in items]
        for future in as_completed(futures):
            yield future.result()
    finally:  # on an error, drop the work not started yet instead of finishing it first
        pool.shutdown(wait=True, cancel_futures=True)
