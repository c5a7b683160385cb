"""Disk and time of committing a frames-like folder to the DVC cache: the repository's link types against DVC's
default (``reflink,copy``).

    python -m bench.dvc_links --json dvc_links.json          # 512 files of 1 MiB
    python -m bench.dvc_links --files 64 --mib 1             # smaller

Each run makes a fresh DVC repository in a temporary folder on the file system of ``--dir``, writes the files
(random bytes, as JPEG shards are incompressible), runs ``dvc add`` on the folder, and counts the bytes the
workspace and the cache hold together (each inode once, from its allocated blocks) and the wall time of the add.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from dvc.repo import Repo

from bench.common import machine_info, median, write_json

DEFAULT = "reflink,copy"  # DVC's default link types


def repository_types() -> str:
    with Repo(str(Path(__file__).resolve().parents[1])) as repo:
        return ",".join(repo.config["cache"]["type"])


def allocated_bytes(folder: Path) -> int:
    """Bytes allocated to the files under ``folder``, each inode once (a hardlink counts once)."""
    seen, total = set(), 0
    for path in folder.rglob("*"):
        stat = path.lstat()
        if path.is_file() and not path.is_symlink() and stat.st_ino not in seen:
            seen.add(stat.st_ino)
            total += stat.st_blocks * 512
    return total


def add_folder(root: Path, types: str, files: int, mib: int, seed: int) -> tuple[float, int]:
    """(seconds of ``dvc add``, bytes on disk afterwards) for ``files`` files of ``mib`` MiB."""
    with Repo.init(str(root), no_scm=True).config.edit() as config:
        config["cache"]["type"] = types
    data = root / "frames"
    data.mkdir()
    rng = np.random.default_rng(seed)
    for k in range(files):
        (data / f"shard-{k:05d}.arrow").write_bytes(rng.bytes(mib << 20))
    os.sync()
    start = time.perf_counter()
    Repo(str(root)).add(str(data))
    os.sync()
    return time.perf_counter() - start, allocated_bytes(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=512)
    parser.add_argument("--mib", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="a folder on the file system to measure")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    data_bytes = args.files * (args.mib << 20)
    rows = []
    for types in (DEFAULT, repository_types()):
        runs = []
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory(dir=args.dir) as root:
                runs.append(add_folder(Path(root), types, args.files, args.mib, repeat))
        row = {
            "cache_type": types,
            "data_bytes": data_bytes,
            "add_s": median([seconds for seconds, _ in runs]),
            "disk_over_data": median([used for _, used in runs]) / data_bytes,
        }
        rows.append(row)
        print(row, flush=True)
    write_json({"machine": machine_info(), "files": args.files, "mib": args.mib, "rows": rows}, args.json or "-")


if __name__ == "__main__":
    main()
