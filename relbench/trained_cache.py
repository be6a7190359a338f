"""Where methods that fine-tune per subject set keep what they trained, so it is trained once.

DreamBooth-LoRA, Custom Diffusion and ReVersion train weights for a set of subjects (or a
relation) before they can generate. The weights go to
``<root>/<method>/<settings hash>/<key hash>/`` with ``<root>`` = ``$RELBENCH_TRAINED_CACHE`` or
``$XDG_CACHE_HOME/relbench/trained`` (``~/.cache/relbench/trained``). The key says what was
trained on (e.g. the subject ids and the sha256 of their reference images); the settings hash says
how. A folder counts only once ``complete.json`` is written (last, atomically), so a run killed
while training trains again, and a lock keeps two processes from training the same folder at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CACHE_ENV = "RELBENCH_TRAINED_CACHE"
COMPLETE = "complete.json"


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relbench" / "trained"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def trained_dir(method: str, settings: dict[str, Any], key: dict[str, Any], root: Path | None = None) -> Path:
    """The folder for weights of ``method`` trained with ``settings`` on ``key``."""
    return (root or cache_root()) / method / _digest(settings) / _digest(key)


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def mark_complete(folder: Path, info: dict[str, Any]) -> None:
    """Record what was trained; written last, atomically, so a half-trained folder never counts."""
    from relbench.runstore import atomic_write_json

    atomic_write_json(folder / COMPLETE, info)


@contextmanager
def training_lock(folder: Path, timeout: float = -1) -> Iterator[None]:
    """Hold the folder's lock while training (waits for another process training the same)."""
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock", timeout=timeout):
        yield


def images_digest(images: list[Any]) -> str:
    """sha256 over the pixels of PIL images (mode, size and bytes): the identity of a subject's references."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()
