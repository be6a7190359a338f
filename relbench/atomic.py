"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file relbench writes in place of another (run files, images, weights, caches) goes
through here: the new content goes to a temporary file beside the target, is fsync'ed, then
renamed over it (``os.replace``). A writer that raises leaves the old file as it was and no
temporary file behind.

Permissions: the temporary file is created with mode 0o666 and the kernel takes the process's
umask off, as for any ``open(path, "w")``; so with the usual umask 022 files are 0644 and
colleagues sharing a server can read runs, weights and caches. (``tempfile.mkstemp`` creates
0600 files, readable by their owner only.) Reading the umask is not needed, so there is no
``os.umask`` round trip that another thread could race with.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Attempts at a fresh temporary name (each has 48 random bits; tempfile tries as often).
_ATTEMPTS = 100
# ".<target name>.<12 hex digits>.tmp": what _create_temporary names its files.
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of this module's temporaries (a kill may leave one behind)."""
    return _TEMPORARY.fullmatch(name) is not None


def remove_temporaries(folder: Path) -> int:
    """Delete the temporaries a killed writer left anywhere under ``folder``; the number removed.
    Only for a folder no other process is writing to (the caller holds its lock)."""
    removed = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if is_temporary(name):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new empty file beside ``path`` (mode 0o666 less the umask), open for writing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name} after {_ATTEMPTS} attempts")


@contextmanager
def _replacing(path: Path) -> Iterator[tuple[int, Path]]:
    """(open descriptor, path) of a temporary file that replaces ``path`` when the block ends
    cleanly and is removed when it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (parent folders are created)."""
    with _replacing(path) as (fd, _):
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path for writers that take a file name (safetensors, diffusers): whatever
    the block writes there replaces ``path`` when it ends cleanly; if it raises, ``path`` is
    left as it was and the temporary file is removed."""
    with _replacing(path) as (fd, tmp):
        mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 less the umask, as the kernel made it
        os.close(fd)
        yield tmp
        # Some writers put a file of their own in its place (safetensors 0.8 renames a 0600 file
        # over it): it gets the mode of the file we created.
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_save_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` as a safetensors file atomically, with ``format: pt`` (what diffusers and
    transformers expect) and ``metadata``; returns ``path``."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    return path
