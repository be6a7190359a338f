"""Errors that mean "the user gave us something wrong" and end the CLI with exit code 2.

Every message is one line that names the file or field and says what was expected. The CLI prints
the message and exits 2; it never shows a traceback for these.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def exception_line(exc: BaseException, limit: int = MAX_QUOTED_CHARS) -> str:
    """``Type: first line of the message`` of a library's exception, cut at a word boundary with "…"
    (libraries' messages run over many lines; the error line quotes only their first)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > limit:
        cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
        text = cut.rstrip(" ,;:") + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RelbenchError(Exception):
    """A user-facing error: bad input, a missing file, a refused operation."""

    exit_code = 2


class Interrupted(RelbenchError):
    """Ctrl-C during long work: nothing is lost, the same command resumes."""

    exit_code = 130


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
