"""Atomic outputs: readable by others as a plain write would be, on disk before the name appears."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from eva02at.core.atomic import DiskFull, atomic_path, remove_leftovers, write_text


@pytest.fixture
def set_umask():
    """os.umask for a test; the process umask is restored after it."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_and_folders_get_the_modes_a_plain_write_gives(tmp_path, set_umask, mask):
    set_umask(mask)
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "plain_dir").mkdir()
    write_text(tmp_path / "out" / "atomic.txt", "x")
    with atomic_path(tmp_path / "atomic_dir", directory=True) as tmp:
        (tmp / "inner.txt").write_text("x")

    assert mode(tmp_path / "out" / "atomic.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~mask
    assert mode(tmp_path / "atomic_dir") == mode(tmp_path / "plain_dir") == 0o777 & ~mask
    assert mode(tmp_path / "out") == 0o777 & ~mask  # a parent folder created on the way


def record_calls(monkeypatch) -> list[tuple[str, str]]:
    """Patch os.fsync and os.replace to log (call, path) in order, then do the real call."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        calls.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_a_file_is_flushed_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = record_calls(monkeypatch)
    write_text(tmp_path / "a.txt", "hello")

    assert [call for call, _ in calls] == ["fsync", "replace", "fsync"]
    assert Path(calls[0][1]).name.startswith(".a.txt.tmp-")  # the temporary file's contents, still unnamed
    assert calls[1][1] == str(tmp_path / "a.txt")
    assert calls[2][1] == str(tmp_path)  # the folder entry that names it
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_every_file_of_a_folder_is_flushed_before_the_rename(tmp_path, monkeypatch):
    calls = record_calls(monkeypatch)
    with atomic_path(tmp_path / "out", directory=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "a.bin").write_bytes(b"a")
        (tmp / "sub" / "b.bin").write_bytes(b"b")

    renamed = calls.index(("replace", str(tmp_path / "out")))
    flushed_before = {Path(path).relative_to(tmp_path).parts[1:] for _, path in calls[:renamed]}
    assert flushed_before == {(), ("a.bin",), ("sub",), ("sub", "b.bin")}  # the folder, its files and subfolder
    assert calls[renamed + 1 :] == [("fsync", str(tmp_path))]


def test_a_failed_block_leaves_the_previous_output_and_no_temporary(tmp_path):
    write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


KILLED_MID_WRITE = """
import os, signal, sys
from eva02at.core.atomic import atomic_path
writes = [atomic_path(sys.argv[1]), atomic_path(sys.argv[2], directory=True)]  # both open at the kill
for write, inside in zip(writes, ("", "part")):
    (write.__enter__() / inside).write_text("half")
os.kill(os.getpid(), signal.SIGKILL)  # no clean-up runs
"""


def test_leftovers_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    keep = ["data.bin", ".gitignore", ".data.bin.tmp-notours", "x.tmp-0123456789abcdef"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    done = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(tmp_path / "a.pt"), str(tmp_path / "b")])
    assert done.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)
    assert len(left) == 2 and all(".tmp-" in name for name in left)  # one file, one folder
    assert sorted(p.name for p in remove_leftovers(tmp_path)) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert remove_leftovers(tmp_path / "absent") == []


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_the_previous_output(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"finished")

    with pytest.raises(DiskFull) as err, atomic_path(target) as tmp, tmp.open("wb") as handle:
        handle.write(b"half")
        handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")  # what the next write on a full disk raises
    message = str(err.value)
    assert message.startswith(f"{target}: no space left on its file system (") and "\n" not in message
    assert message.endswith("free space or move the output elsewhere, then rerun")
    assert target.read_bytes() == b"finished" and sorted(tmp_path.iterdir()) == [target]
    with pytest.raises(OSError, match="Permission denied"), atomic_path(target):  # other errors stay as they are
        raise OSError(errno.EACCES, "Permission denied")
