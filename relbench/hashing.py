"""The sha256 of a file's bytes: the one helper for the identity of files relbench reads or
writes (reference images a run read, trained weights a run used, weights a trainer wrote)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, streamed (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
