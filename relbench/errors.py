"""Errors that mean "the user gave us something wrong" and end the CLI with exit code 2.

Every message is one line that names the file or field and says what was expected. The CLI prints
the message and exits 2; it never shows a traceback for these.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The most characters an error shows of what the user wrote: a field (ids included), a message
# with the value it quotes, a file name, the whole `error:` line. A longer text keeps its start,
# then "…" and its original length: a huge or hostile value (a 2 GB string in a spec) must never
# flood the terminal. Applied where errors are formatted (Problem, cli.main), not per call site.
MAX_QUOTED_CHARS = 200
MAX_MESSAGE_CHARS = 400
MAX_LINE_CHARS = 1000


def clip(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters with "…" and the original length."""
    if len(text) <= limit:
        return text.replace("\r", " ").replace("\n", " ")
    kept = text[:limit].replace("\r", " ").replace("\n", " ")
    return f"{kept}… ({len(text):,} characters)"


def shorten(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` on one line (whitespace runs collapsed), cut at a word boundary with "…"."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:(") + "…"


def exception_line(exc: BaseException, limit: int = MAX_QUOTED_CHARS) -> str:
    """``Type: first line of the message`` of a library's exception, cut at a word boundary with "…"
    (libraries' messages run over many lines; the error line quotes only their first)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = shorten(lines[0], limit) if lines else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RelbenchError(Exception):
    """A user-facing error: bad input, a missing file, a refused operation."""

    exit_code = 2


class Interrupted(RelbenchError):
    """Ctrl-C during long work: nothing is lost, the same command resumes."""

    exit_code = 130


# What the disk says when an output cannot be written: the user frees space or picks another folder.
_OUTPUT_ERRNO_HINTS = {
    errno.ENOSPC: "no space left on device; free space and run the same command again",
    errno.EDQUOT: "disk quota exceeded; free space and run the same command again",
    errno.EACCES: "permission denied; make it writable or choose another output folder, then run the command again",
    errno.EPERM: "operation not permitted; make it writable or choose another output folder, then run the command again",
    errno.EROFS: "read-only file system; choose another output folder",
}


@contextmanager
def output_errors(path: Path | str) -> Iterator[None]:
    """Writing ``path`` (a file or folder of the command's own output): a full disk, an exceeded
    quota, a folder without write permission or a read-only file system end in one error line
    naming ``path`` (the target, never a temporary file beside it). Any other OSError passes: it is
    not the user's disk, so it is a bug to show in full."""
    try:
        yield
    except OSError as exc:
        hint = _OUTPUT_ERRNO_HINTS.get(exc.errno or 0)
        if hint is None:
            raise
        raise RelbenchError(f"{path}: {hint}") from None


class UnknownNameError(RelbenchError, KeyError):
    """A method, metric or benchmark name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Problem:
    """One problem found in a spec or its files: `<file>: <field>: <problem>`."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{clip(self.file, MAX_MESSAGE_CHARS)}: {clip(self.field)}: {clip(self.message, MAX_MESSAGE_CHARS)}"


class SpecError(RelbenchError):
    """A benchmark spec that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__(str(self.problems[0]) if self.problems else "invalid spec")

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        return f"{self.problems[0]} (and {len(self.problems) - 1} more problems; run `relbench data validate`)"
