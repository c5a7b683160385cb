"""Checksums of files: the one place the pipeline hashes a file's bytes."""

from __future__ import annotations

import hashlib
import os


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in blocks: sha256 for the pipeline's own records (shards, checkpoints
    of exports), md5 where it must match what ``dvc.lock`` records."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()
