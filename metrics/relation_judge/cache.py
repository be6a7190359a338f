"""The judge cache: one small JSON file per (image, question, judge, template version) answer.

Re-scoring a run (a new metric, a report with another judge setting, a resumed run) then costs no
forward pass and no API request. Keys are the SHA-256 of the image's pixel digest, the question
text, the judge's identity (id, revision, dtype, answer mode) and the template version, so a
change in any of them misses the cache instead of returning a stale answer.

* Folder: given by the caller, else ``$XDG_CACHE_HOME/relbench/judge`` (``~/.cache/relbench/judge``).
  Files live at ``<folder>/<key[:2]>/<key>.json`` and hold the key's parts next to the answer, so a
  file can be read by a person and checked on load.
* Writes are atomic (temporary file in the same folder, then rename): a killed process leaves no
  half-written answer, and concurrent writers of the same key write the same content.
* Only successful answers go to disk: a failed API call is asked again by the next run (a resumed
  run re-scores the rows that hold one). Within one run a failed answer is kept in memory like any
  other, so that every metric reading that question (relation_vqa, relation_acc and their
  presence questions) reads the same failure instead of asking again and getting another answer.
* Judges without a stable identity (models built in memory) are cached in memory only.
* API answers are frozen once cached: an API judge varies run to run even at temperature 0
  (MT-Bench), and re-scoring from the cache does not measure that variance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from relbench.atomic import atomic_write_text
from relbench.errors import RelbenchError
from relbench.metrics.relation_judge import (
    ChoiceAnswer,
    ChoiceQuestion,
    Judge,
    YesNoAnswer,
    YesNoQuestion,
)
from relbench.metrics.relation_judge.templates import TEMPLATE_VERSION

log = logging.getLogger(__name__)

CACHE_SCHEMA = 1


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relbench" / "judge"


def cache_key_parts(image_digest: str, question: str, judge_identity: str, kind: str,
                    template_version: str = TEMPLATE_VERSION) -> dict[str, str]:
    return {
        "image": image_digest,
        "question": question,
        "judge": judge_identity,
        "template_version": template_version,
        "kind": kind,  # "yes_no" or "choice": the same text asked two ways gives two answers
    }


def cache_key(parts: dict[str, str]) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class JudgeCache:
    """Answers on disk, one JSON file per key."""

    def __init__(self, folder: str | os.PathLike[str] | None = None):
        self.folder = Path(folder).expanduser() if folder is not None else default_cache_dir()
        if self.folder.exists() and not self.folder.is_dir():
            raise RelbenchError(f"judge cache {self.folder}: exists and is not a folder")

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, parts: dict[str, str]) -> dict[str, Any] | None:
        """The stored answer for these key parts, or None (missing, unreadable or another key)."""
        path = self.path(cache_key(parts))
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # a damaged file is a miss; the new answer replaces it
            log.warning("judge cache: ignoring unreadable %s: %s", path, exc)
            return None
        if not isinstance(record, dict) or record.get("schema") != CACHE_SCHEMA or record.get("key") != parts:
            return None
        answer = record.get("answer")
        return answer if isinstance(answer, dict) else None

    def put(self, parts: dict[str, str], answer: dict[str, Any]) -> None:
        path = self.path(cache_key(parts))
        text = json.dumps({"schema": CACHE_SCHEMA, "key": parts, "answer": answer}, ensure_ascii=False, indent=1)
        atomic_write_text(path, text)


Answer = TypeVar("Answer", YesNoAnswer, ChoiceAnswer)


class CachedJudge:
    """A judge behind two caches: in memory (this run) and on disk (``JudgeCache`` or None).

    Questions already answered are served from a cache; the rest go to the judge in one call.
    The memory cache holds failed answers too (one answer per question per run, shared by every
    metric); the disk cache only successful ones. ``hits`` and ``misses`` count questions, for
    tests and logs.
    """

    def __init__(self, judge: Judge, cache: JudgeCache | None):
        self.judge = judge
        identity = judge.identity()
        self.identity = identity
        self.disk = cache if identity is not None else None
        self._memory: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0

    def yes_no(self, questions: Sequence[YesNoQuestion]) -> list[YesNoAnswer]:
        return self._ask(questions, "yes_no", self.judge.yes_no, YesNoAnswer.from_json)

    def choice(self, questions: Sequence[ChoiceQuestion]) -> list[ChoiceAnswer]:
        return self._ask(questions, "choice", self.judge.choice, ChoiceAnswer.from_json)

    def _ask(
        self,
        questions: Sequence[Any],
        kind: str,
        ask: Callable[[Sequence[Any]], list[Answer]],
        parse: Callable[[dict[str, Any]], Answer],
    ) -> list[Answer]:
        from relbench.metrics.embedding_cache import image_digest

        identity = self.identity or f"in-memory judge {id(self.judge)}"
        answers: list[Answer | None] = [None] * len(questions)
        pending: dict[str, list[int]] = {}  # memory key -> question indices (duplicates asked once)
        parts_of: dict[str, dict[str, str]] = {}
        for i, question in enumerate(questions):
            parts = cache_key_parts(image_digest(question.image), question.text, identity, kind)
            key = cache_key(parts)
            stored = self._memory.get(key)
            if stored is None and self.disk is not None:
                stored = self.disk.get(parts)
                if stored is not None:
                    self._memory[key] = stored
            if stored is not None:
                answers[i] = parse(stored)
                self.hits += 1
            else:
                pending.setdefault(key, []).append(i)
                parts_of[key] = parts
        if pending:
            keys = list(pending)
            fresh = ask([questions[pending[key][0]] for key in keys])
            if len(fresh) != len(keys):
                raise RuntimeError(f"judge {self.judge.judge_id!r} returned {len(fresh)} answers for {len(keys)} questions")
            for key, answer in zip(keys, fresh):
                self.misses += 1
                for i in pending[key]:
                    answers[i] = answer
                record = answer.to_json()
                self._memory[key] = record  # failures too: every metric of this run reads the same answer
                if self.disk is not None and not answer.failed:  # the next run asks a failed question again
                    self.disk.put(parts_of[key], record)
        return [answer for answer in answers if answer is not None]
