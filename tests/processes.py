"""The Linux process table as the fault tests read it: who is alive, whose child, in which session; and waiting
on a condition, where a limit only ends a hung test and is never a timing the test relies on."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Process:
    pid: int
    state: str  # "Z": exited, only its parent's bookkeeping remains
    ppid: int
    session: int


def process(pid: int) -> Process | None:
    """``/proc/<pid>/stat``, or None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid, _, session = stat.rpartition(")")[2].split()[:4]  # the fields after the command name
    return Process(pid, state, int(ppid), int(session))


def processes() -> list[Process]:
    found = (process(int(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [p for p in found if p is not None]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has finished)."""
    found = process(pid)
    return found is not None and found.state != "Z"


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    return [p.pid for p in processes() if p.ppid == pid]


def in_session(session: int) -> list[int]:
    """Running processes of a session (zombies do not count)."""
    return [p.pid for p in processes() if p.session == session and p.state != "Z"]


def wait_until(condition: Callable[[], bool], what: str, limit: float = 300.0) -> None:
    """Poll ``condition`` until it holds; ``limit`` only bounds a failure."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
