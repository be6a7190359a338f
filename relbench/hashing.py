"""Digests: the one helper for the identity of files relbench reads or writes (reference images a
run read, trained weights a run used, weights a trainer wrote), and the one for settings (a
method's settings hash; the settings a result row refers to in run.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, streamed (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def settings_hash(settings: Any) -> str:
    """A short, stable hash of JSON-serialisable settings (key order does not matter)."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
