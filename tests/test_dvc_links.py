"""The repository's DVC config links the cache into the workspace where the file system allows, read-only."""

from __future__ import annotations

import stat
from pathlib import Path

from dvc.repo import Repo

ROOT = Path(__file__).resolve().parents[1]
LINKS = ["hardlink", "symlink", "copy"]


def repository_cache_types() -> list[str]:
    with Repo(str(ROOT)) as repo:
        return list(repo.config["cache"]["type"])


def test_cache_types_link_first_and_copy_last():
    """Hardlink first: DVC links a committed output into the cache only when hardlink is the first type (with
    reflink first, on a file system without reflinks, it copies the output and keeps the copy)."""
    assert repository_cache_types() == LINKS


def test_an_added_folder_shares_its_bytes_with_the_cache_and_is_read_only(tmp_path):
    with Repo.init(str(tmp_path), no_scm=True).config.edit() as config:
        config["cache"]["type"] = ",".join(repository_cache_types())
    data = tmp_path / "frames"
    data.mkdir()
    for k in range(3):
        (data / f"shard-{k}.arrow").write_bytes(bytes(range(256)) * (k + 1) * 64)
    repo = Repo(str(tmp_path))  # reads the edited config
    repo.add(str(data))
    cached = {p.stat().st_ino for p in (tmp_path / ".dvc" / "cache").rglob("*") if p.is_file()}
    for path in sorted(data.iterdir()):
        linked = path.is_symlink() or path.stat().st_ino in cached  # hardlink: one inode with the cache
        assert linked, f"{path.name} is a copy of the cache"
        assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0, f"{path.name} is writable: an edit reaches the cache"
