"""A VLM as judge of whether an image shows a relation (relation-accuracy metrics).

* ``templates``: the fixed, versioned questions.
* ``local``: a transformers chat VLM (default ``Qwen/Qwen2.5-VL-7B-Instruct``); P(yes) from one
  forward pass; the tiny profile's random Qwen2.5-VL with an offline tokenizer.
* ``api``: any OpenAI-compatible chat endpoint (``requests``), with retries and failure records.
* ``cache``: answers on disk keyed by image, question, judge and template version.
* ``metric``: the ``Metric`` classes (``relation_vqa``, ``relation_acc``, ``relation_mc``).
* ``relbench.metrics.functional.judge``: the math (probabilities, gating, CircularEval, parsing).

This module holds only the judge interface, its answer records and the count of failed answers in
stored rows (``count_failed_questions``); it imports no torch.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class YesNoAnswer:
    """A judge's answer to a yes/no question.

    ``source`` says where the probability comes from: ``logits`` (local model: softmax over the
    full vocabulary), ``logprobs`` (API top_logprobs of the first answer token) or ``text`` (the
    API's text answer parsed: yes -> 1, no -> 0). A failure has ``normalized`` None and an
    ``error``; ``raw_text`` keeps what an API answered.
    """

    p_yes: float | None
    p_no: float | None
    normalized: float | None  # P(yes) / (P(yes) + P(no))
    source: str
    raw_text: str | None = None
    error: str | None = None
    served_model: str | None = None  # the model name an API reported serving

    @property
    def failed(self) -> bool:
        return self.normalized is None

    @property
    def answer(self) -> bool | None:
        from relbench.metrics.functional.judge import is_yes

        return is_yes(self.normalized)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "YesNoAnswer":
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__})  # type: ignore[arg-type]


@dataclass(frozen=True)
class ChoiceAnswer:
    """A judge's answer to a multiple-choice question: the chosen option index (0 = "A")."""

    choice: int | None
    probabilities: tuple[float, ...] | None  # softmax mass of each option letter, when known
    source: str
    raw_text: str | None = None
    error: str | None = None
    served_model: str | None = None

    @property
    def failed(self) -> bool:
        return self.choice is None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["probabilities"] = list(self.probabilities) if self.probabilities is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ChoiceAnswer":
        values = {key: data.get(key) for key in cls.__dataclass_fields__}
        if values["probabilities"] is not None:
            values["probabilities"] = tuple(values["probabilities"])
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class YesNoQuestion:
    image: "Image.Image"
    text: str


@dataclass(frozen=True)
class ChoiceQuestion:
    image: "Image.Image"
    text: str
    n_options: int


class Judge(ABC):
    """Answers questions about images. Implementations: ``LocalVLMJudge``, ``APIJudge``."""

    judge_id: str  # what results name the judge by: a hub id, a local path, "api:<model>"

    @abstractmethod
    def identity(self) -> str | None:
        """Everything that moves an answer (judge id, revision, dtype, answer mode), as the cache
        key's judge part; None when it is not stable across processes (a model built in memory),
        which keeps its answers out of the disk cache."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Recorded with every result: at least judge_id, revision and dtype."""

    @abstractmethod
    def yes_no(self, questions: Sequence[YesNoQuestion]) -> list[YesNoAnswer]:
        """One answer per question, in order; failures are answers, not exceptions."""

    @abstractmethod
    def choice(self, questions: Sequence[ChoiceQuestion]) -> list[ChoiceAnswer]:
        """One answer per question, in order; failures are answers, not exceptions."""


# --------------------------------------------------------------------------------------------
# Failed answers in stored rows (the count `relbench evaluate` and the report show)

_KIND = re.compile(r"^(HTTP \d+|unparseable|timed out|request failed: \w+|malformed response)")


def failure_kind(error: str) -> str:
    """'HTTP 500 (gave up after 4 attempts)' -> 'HTTP 500'; 'unparseable: Maybe.' -> 'unparseable'."""
    match = _KIND.match(error)
    return match.group(1) if match else error.split(" (", 1)[0][:60]


def count_failed_questions(rows: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """Per failure kind, the judge questions whose answer failed, over rows given as ``{metric:
    details}``. A question read by several metrics (relation_vqa and relation_acc both list the
    relation and presence answers under the same names) counts once per row."""
    from relbench.metrics.base import RETRY_KEY

    counts: Counter[str] = Counter()
    for metrics in rows:
        errors: dict[str, Any] = {}
        for details in metrics.values():
            if isinstance(details, Mapping) and details.get(RETRY_KEY) and isinstance(details.get("errors"), Mapping):
                errors.update(details["errors"])
        counts.update(failure_kind(str(error)) for error in errors.values())
    return counts


def failure_line(counts: Mapping[str, int], hint: str = "run the same command again to retry them") -> str | None:
    """'judge: 5 questions failed (HTTP 500 x5); run the same command again to retry them', or None."""
    total = sum(counts.values())
    if not total:
        return None
    kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return f"judge: {total} question{'s' if total != 1 else ''} failed ({kinds}); {hint}"
