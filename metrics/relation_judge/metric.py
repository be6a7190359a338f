"""Relation metrics answered by a VLM judge.

* ``relation_vqa``: VQAScore of the relation question, ``100 x P(yes) / (P(yes) + P(no))`` for
  "Does this image show {a dog} {hugging} {a cat}? Answer yes or no." Continuous, ungated: the
  number comparable with VQAScore. ``details``: raw P(yes) and P(no), the normalised value, each
  subject's presence answer and the gated result.
* ``relation_acc``: DSG-style gated accuracy, 100 if both subjects are judged present ("Is there
  a dog in this image?") AND the relation question is answered yes (normalised P(yes) > 0.5),
  else 0. Reads the same answers as ``relation_vqa`` (asked once per image and judge).
* ``relation_mc``: multiple choice with CircularEval, 100 if the judge picks the true relation in
  every cyclic rotation of the options, else 0. Options: the true relation and up to ``k`` (3)
  distractors drawn, seeded per case, from the benchmark's other relations whose roles accept
  these subjects' categories; cases without such a relation get NaN. The letters chosen are in
  ``details["chosen_letters"]``; ``position_bias()`` (this metric's answers) and
  ``position_bias_of_rows`` (stored rows) say how often each letter was picked.

The benchmark comes with each sample (``ScoringSample.benchmark``, ``relation_id``,
``subject_categories``, as the runner fills them) or is given to ``RelationMultipleChoice``.

One answer per (image, question) per run: every metric reading a question reads the same answer
(``CachedJudge`` keeps failures in memory for the run). A metric whose value would rest on a failed
answer (API error, unparseable text) is NaN, never a number, even where the other answers would
decide it: ``relation_vqa`` and ``relation_acc`` read the same relation and presence answers and
are both NaN when any of them failed; ``relation_mc`` is NaN when any rotation failed. Such a
result carries ``details["errors"]`` (per question), ``details["raw_text"]``, ``details["reason"]``
and ``details["retry"]`` (``relbench.metrics.base.RETRY_KEY``): a resumed run asks those questions
again. Means over a run skip NaN. The judge is ``--model judge=...``: a hub id or
local folder (transformers), ``api:MODEL`` for an OpenAI-compatible endpoint, ``tiny:judge`` (the
tiny profile's random model). Metrics built from the same run context share one judge.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError
from relbench.metrics.base import RETRY_KEY, Metric, MetricResult, ScoringSample
from relbench.metrics.relation_judge import (
    ChoiceAnswer,
    ChoiceQuestion,
    Judge,
    YesNoAnswer,
    YesNoQuestion,
    templates,
)
from relbench.metrics.relation_judge.cache import CachedJudge, JudgeCache
from relbench.metrics.relation_judge_meta import RELATION_ACC, RELATION_MC, RELATION_VQA
from relbench.profiles import RunContext

if TYPE_CHECKING:
    from relbench.benchmark import Benchmark, Case

DEFAULT_DISTRACTORS = 3


# --------------------------------------------------------------------------------------------
# What the metrics need beyond ScoringSample


@dataclass(frozen=True)
class RelationCase:
    """The relation of a case and the benchmark's other relations that fit its subjects."""

    relation_id: str
    alternatives: tuple[tuple[str, str], ...]  # (relation id, phrase), in spec order


def fitting_alternatives(benchmark: "Benchmark", relation_id: str, categories: Sequence[str]) -> RelationCase:
    """Every other relation of the benchmark that takes as many subjects as there are categories
    and whose role ``i`` accepts category ``i`` (a relation with the same phrase is left out)."""
    if relation_id not in benchmark.relations:
        raise RelbenchError(f"relation_mc: relation {relation_id!r} is not in benchmark {benchmark.label}")
    true_phrase = benchmark.relations[relation_id].phrase.strip()
    alternatives = tuple(
        (relation.id, relation.phrase)
        for relation in benchmark.relations.values()
        if relation.id != relation_id
        and relation.phrase.strip() != true_phrase
        and relation.arity == len(categories)
        and all(category in fits for category, fits in zip(categories, relation.fits))
    )
    return RelationCase(relation_id, alternatives)


def relation_case(benchmark: "Benchmark", case: "Case") -> RelationCase:
    """``fitting_alternatives`` for a case of the benchmark."""
    return fitting_alternatives(benchmark, case.relation, [benchmark.subjects[s].category for s in case.subjects])


# --------------------------------------------------------------------------------------------
# The judge of a run context


def build_judge(context: RunContext, *, dtype: str | None = None, api_options: Mapping[str, Any] | None = None) -> Judge:
    """The judge ``--model judge=...`` names: ``api:MODEL`` -> APIJudge, else a local VLM."""
    from relbench.metrics.relation_judge.local import judge_ref

    ref = judge_ref(context)
    if ref.id.startswith("api:"):
        from relbench.metrics.relation_judge.api import APIJudge

        if ref.revision:
            raise RelbenchError(f"--model judge={ref.id}@{ref.revision}: API models take no @revision; name a dated model instead")
        return APIJudge(ref.id[len("api:"):], **{**context.judge_options, **dict(api_options or {})})
    check_judge_options(context)
    from relbench.metrics.relation_judge.local import LocalVLMJudge

    return LocalVLMJudge(context, dtype=dtype)


def check_judge_options(context: RunContext) -> None:
    """``--judge-option`` (transport settings) applies to an API judge only."""
    if context.judge_options and not context.model_overrides.get("judge", "").startswith("api:"):
        raise RelbenchError(
            f"--judge-option {', '.join(context.judge_options)}: applies to an API judge (--model judge=api:MODEL) only"
        )


def _failed(details: dict[str, Any], failures: Sequence[tuple[str, YesNoAnswer | ChoiceAnswer]]) -> None:
    """Record failed answers in ``details``: per question its error and raw text, one reason, retry."""
    details["errors"] = {what: answer.error for what, answer in failures}
    details["raw_text"] = {what: answer.raw_text for what, answer in failures}
    details["reason"] = "judge answer failed: " + "; ".join(f"{what}: {answer.error}" for what, answer in failures)
    details[RETRY_KEY] = True


# One judge per run context (a 7B model is loaded once for all three metrics), and one answer
# cache per (context, cache folder) so that relation_acc reads relation_vqa's answers.
_SHARED_JUDGES: dict[int, Judge] = {}
_SHARED_CACHED: dict[tuple[int, str], CachedJudge] = {}


def _forget(context_id: int) -> None:
    _SHARED_JUDGES.pop(context_id, None)
    for key in [key for key in _SHARED_CACHED if key[0] == context_id]:
        _SHARED_CACHED.pop(key, None)


def shared_cached_judge(context: RunContext, cache_dir: str | Path | None, use_cache: bool) -> CachedJudge:
    context_id = id(context)
    if context_id not in _SHARED_JUDGES:
        _SHARED_JUDGES[context_id] = build_judge(context)
        weakref.finalize(context, _forget, context_id)
    cache = JudgeCache(cache_dir) if use_cache else None
    key = (context_id, str(cache.folder) if cache else "")
    if key not in _SHARED_CACHED:
        _SHARED_CACHED[key] = CachedJudge(_SHARED_JUDGES[context_id], cache)
    return _SHARED_CACHED[key]


# --------------------------------------------------------------------------------------------
# Metrics


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _flag(value: bool | None) -> float | None:
    return None if value is None else float(value)


class _JudgeMetric(Metric):
    def __init__(
        self,
        context: RunContext,
        judge: Judge | None = None,
        *,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ):
        super().__init__(context)
        if judge is None:
            self.judge = shared_cached_judge(context, cache_dir, use_cache)
        else:
            self.judge = CachedJudge(judge, JudgeCache(cache_dir) if use_cache else None)

    def _judge_settings(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "profile": self.context.profile,
            **self.judge.judge.settings(),
            "template_version": templates.TEMPLATE_VERSION,
            "templates": templates.describe(),
        }


class RelationVQAScore(_JudgeMetric):
    """``relation_vqa`` (see the module docstring); ``relation_acc`` is its gated accuracy."""

    info = RELATION_VQA

    def _value(self, relation: YesNoAnswer, gated: bool | None) -> float:
        return 100.0 * _nan_if_none(relation.normalized)

    def score(self, samples: Sequence[ScoringSample]) -> list[MetricResult]:
        from relbench.metrics.functional.judge import gated_answer

        questions: list[YesNoQuestion] = []
        spans: list[tuple[int, int]] = []  # per sample: [start, end) in questions; the relation first
        for sample in samples:
            if not sample.subject_nouns:
                raise RelbenchError(f"case {sample.case_id}: no subjects to ask about")
            start = len(questions)
            questions.append(YesNoQuestion(sample.image, templates.relation_question(sample.subject_nouns, sample.relation_phrase)))
            questions.extend(YesNoQuestion(sample.image, templates.presence_question(noun)) for noun in sample.subject_nouns)
            spans.append((start, len(questions)))
        answers = self.judge.yes_no(questions)

        results = []
        for sample, (start, end) in zip(samples, spans):
            relation, presence = answers[start], answers[start + 1 : end]
            failures = [(what, answer) for what, answer in (("relation", relation), *zip(sample.subject_ids, presence)) if answer.failed]
            # No verdict from an incomplete set of answers (see the module docstring).
            gated = None if failures else gated_answer([answer.answer for answer in presence], relation.answer)
            details: dict[str, Any] = {
                "p_yes": relation.p_yes,
                "p_no": relation.p_no,
                "p_yes_normalized": relation.normalized,
                "relation_yes": _flag(relation.answer),
                "answer_source": relation.source,
                "gated_shown": _flag(gated),
                # The report's verdict key (reports/tables.py): the gated answer.
                "relation_shown": _flag(gated),
            }
            for subject_id, answer in zip(sample.subject_ids, presence):
                details[f"presence_{subject_id}"] = answer.normalized
                details[f"present_{subject_id}"] = _flag(answer.answer)
            if failures:
                _failed(details, failures)
            served = {answer.served_model for answer in answers[start:end] if answer.served_model}
            if served:
                details["served_model"] = ", ".join(sorted(served))
            results.append(MetricResult(value=math.nan if failures else self._value(relation, gated), details=details))
        return results

    def settings(self) -> dict[str, Any]:
        return {
            **self._judge_settings(),
            "value": "100 x P(yes) / (P(yes) + P(no)) of the relation question, not gated",
            "threshold": 0.5,
            "gating": "details.gated_shown: relation answered yes and every subject's presence answered yes (DSG)",
        }


class RelationAccuracy(RelationVQAScore):
    info = RELATION_ACC

    def _value(self, relation: YesNoAnswer, gated: bool | None) -> float:
        return math.nan if gated is None else 100.0 * float(gated)

    def settings(self) -> dict[str, Any]:
        return {
            **self._judge_settings(),
            "value": "100 if every subject's presence question and the relation question are answered yes "
                     "(normalised P(yes) > 0.5), else 0 (DSG gating: a subject answered absent makes it 0)",
            "threshold": 0.5,
        }


class RelationMultipleChoice(_JudgeMetric):
    info = RELATION_MC

    def __init__(
        self,
        context: RunContext,
        judge: Judge | None = None,
        *,
        benchmark: "Benchmark | None" = None,
        distractors: int = DEFAULT_DISTRACTORS,
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(context, judge, **kwargs)
        if not 1 <= distractors <= 25:
            raise RelbenchError(f"relation_mc distractors: expected 1 to 25, got {distractors}")
        self.distractors = distractors
        self.seed = seed
        self._cases: dict[str, RelationCase] = {}
        if benchmark is not None:
            self.set_benchmark(benchmark)
        self.chosen_letters: list[str | None] = []  # every rotation's answer this metric scored
        self.max_options = 0

    def set_benchmark(self, benchmark: "Benchmark") -> None:
        self._cases = {case.id: relation_case(benchmark, case) for case in benchmark.cases}

    def relation_case(self, sample: ScoringSample) -> RelationCase:
        """From the sample's benchmark, relation id and subject categories (as the runner fills
        them), else from the benchmark this metric was built with, by case id."""
        if sample.benchmark is not None and sample.relation_id and len(sample.subject_categories) == len(sample.subject_ids):
            return fitting_alternatives(sample.benchmark, sample.relation_id, sample.subject_categories)
        if sample.case_id in self._cases:
            return self._cases[sample.case_id]
        raise RelbenchError(
            f"relation_mc: case {sample.case_id!r}: the sample carries no benchmark, relation id and subject categories, "
            "and the metric was built without benchmark=..."
        )

    def options(self, sample: ScoringSample) -> tuple[list[str], dict[str, str], str]:
        """(option relation ids in base order, id -> phrase, true relation id) of a sample."""
        from relbench.metrics.functional.judge import choose_distractors, option_order

        case = self.relation_case(sample)
        phrases = {case.relation_id: sample.relation_phrase, **dict(case.alternatives)}
        key = f"{sample.case_id}:{case.relation_id}"
        chosen = choose_distractors([rid for rid, _ in case.alternatives], self.distractors, self.seed, key)
        return option_order([case.relation_id, *chosen], self.seed, key), phrases, case.relation_id

    def score(self, samples: Sequence[ScoringSample]) -> list[MetricResult]:
        from relbench.metrics.functional.judge import circular_correct, option_letter, rotations

        questions: list[ChoiceQuestion] = []
        plans: list[tuple[list[str], list[int], int] | None] = []  # base ids, correct index per rotation, first question
        for sample in samples:
            base, phrases, true_id = self.options(sample)
            if len(base) < 2:
                plans.append(None)
                continue
            first, correct = len(questions), []
            for rotation in rotations(len(base)):
                ordered = [base[i] for i in rotation]
                correct.append(ordered.index(true_id))
                text = templates.choice_question(sample.subject_nouns, [phrases[rid] for rid in ordered])
                questions.append(ChoiceQuestion(sample.image, text, len(ordered)))
            plans.append((base, correct, first))
        answers = self.judge.choice(questions)

        results = []
        for plan in plans:
            if plan is None:
                results.append(MetricResult(value=math.nan, details={"skipped": "no other relation of the benchmark fits these subjects"}))
                continue
            base, correct, first = plan
            rotation_answers: list[ChoiceAnswer] = answers[first : first + len(base)]
            chosen = [answer.choice for answer in rotation_answers]
            letters = [None if c is None else option_letter(c) for c in chosen]
            self.chosen_letters.extend(letters)
            self.max_options = max(self.max_options, len(base))
            outcome = circular_correct(chosen, correct)
            details: dict[str, Any] = {
                "options": list(base),
                "n_options": len(base),
                "expected_letters": [option_letter(c) for c in correct],
                "chosen_letters": letters,
                "rotations_correct": sum(1 for c, k in zip(chosen, correct) if c == k),
            }
            failed = [(f"rotation_{i}", answer) for i, answer in enumerate(rotation_answers) if answer.failed]
            if failed:  # NaN even when another rotation was answered wrong (see the module docstring)
                _failed(details, failed)
            value = math.nan if failed or outcome is None else 100.0 * float(outcome)
            results.append(MetricResult(value=value, details=details))
        return results

    def position_bias(self) -> dict[str, float]:
        """Percent of this metric's answered rotations that chose each letter (A = 100: always A)."""
        from relbench.metrics.functional.judge import position_bias

        return position_bias(self.chosen_letters, self.max_options)

    def settings(self) -> dict[str, Any]:
        return {
            **self._judge_settings(),
            "value": "100 if the true relation is chosen in every cyclic rotation of the options (CircularEval), else 0",
            "distractors": self.distractors,
            "distractor_seed": self.seed,
            "distractor_pool": "the benchmark's other relations whose roles accept these subjects' categories",
            "option_order": "seeded shuffle per case, then every cyclic rotation",
        }


def position_bias_of_rows(details: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Position bias over stored ``relation_mc`` details (e.g. every row of a method in a run):
    percent of the answered rotations that chose each letter, up to the largest option count."""
    from relbench.metrics.functional.judge import position_bias

    letters: list[str | None] = []
    n_letters = 0
    for entry in details:
        letters.extend(entry.get("chosen_letters") or [])
        n_letters = max(n_letters, int(entry.get("n_options") or 0))
    return position_bias(letters, n_letters)
