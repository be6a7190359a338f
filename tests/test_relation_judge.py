"""The VLM relation judge: probabilities, gating, CircularEval, the local and API judges, the cache.

The local judge runs the tiny profile's random Qwen2.5-VL (built from a config, offline
tokenizer); its P(yes) is checked against a softmax computed here from the model's own logits.
The API judge talks to a loopback OpenAI-compatible server (tests/fake_openai.py) that can answer,
refuse, fail, stall or send garbage. Photos come from scikit-image. Everything is offline.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network (see conftest)

import pytest
import torch
from PIL import Image

from fake_openai import FakeOpenAI, Reply, image_url_of, question_of
from relbench.benchmarks import load_benchmark
from relbench.errors import RelbenchError
from relbench.metrics.base import ScoringSample
from relbench.metrics.functional.judge import (
    answer_log_masses,
    choose_distractors,
    circular_correct,
    gated_answer,
    option_order,
    option_probabilities,
    parse_choice,
    parse_yes_no,
    position_bias,
    rotations,
    unparseable_reason,
    yes_no_probabilities,
)
from relbench.metrics.relation_judge import (
    ChoiceAnswer,
    ChoiceQuestion,
    Judge,
    YesNoAnswer,
    YesNoQuestion,
    count_failed_questions,
    failure_kind,
    failure_line,
    templates,
)
from relbench.metrics.relation_judge.api import APIJudge, parse_transport_options, retry_after_seconds
from relbench.metrics.relation_judge.cache import CachedJudge, JudgeCache, default_cache_dir
from relbench.metrics.relation_judge.local import NO_SPELLINGS, YES_SPELLINGS, LocalVLMJudge, tiny_vlm
from relbench.metrics.relation_judge.metric import (
    RelationAccuracy,
    RelationMultipleChoice,
    RelationCase,
    RelationVQAScore,
    build_judge,
    position_bias_of_rows,
    relation_case,
)
from relbench.profiles import RunContext
from relbench.runstore import read_rows

API_KEY = "sk-test-DO-NOT-LEAK-4f1c2b"


# ------------------------------------------------------------------------------------------
# Photos, samples and scripted judges


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    import skimage.data

    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in ("astronaut", "chelsea", "coffee", "rocket")}


@pytest.fixture(scope="module")
def demo():
    return load_benchmark("demo")


def demo_samples(demo, photos, *, wired: bool = False) -> list[ScoringSample]:
    """One sample per demo case; each case gets its own photo so that answers can differ.
    ``wired``: with the relation id, categories and benchmark, as the runner fills them."""
    images = [photos["astronaut"], photos["chelsea"], photos["coffee"], photos["rocket"]]
    samples = []
    for case, image in zip(demo.cases, images):
        relation = demo.relations[case.relation]
        extra: dict[str, Any] = {}
        if wired:
            extra = dict(relation_id=relation.id, subject_categories=tuple(demo.subjects[s].category for s in case.subjects), benchmark=demo)
        samples.append(ScoringSample(
            case_id=case.id, image=image, prompt=case.prompt, relation_phrase=relation.phrase,
            subject_ids=case.subjects, subject_nouns=tuple(demo.subjects[s].class_noun for s in case.subjects),
            references=tuple(() for _ in case.subjects), **extra,
        ))
    return samples


def true_statement(sample: ScoringSample) -> str:
    return templates.statement(sample.subject_nouns, sample.relation_phrase)


def option_statements(question: str) -> list[str]:
    return re.findall(r"^[A-Z]\. (.*)$", question, flags=re.MULTILINE)


class ScriptedJudge(Judge):
    """Answers from functions of the question text; counts what it is asked."""

    judge_id = "scripted"

    def __init__(self, yes_no: Callable[[str], YesNoAnswer] | None = None, choice: Callable[[str, int], int | None] | None = None):
        self._yes_no = yes_no or (lambda text: YesNoAnswer(0.5, 0.5, 0.5, "logits"))
        self._choice = choice or (lambda text, n: 0)
        self.asked: list[str] = []

    def identity(self) -> str | None:
        return "scripted-v1"

    def settings(self) -> dict[str, Any]:
        return {"judge": "scripted", "judge_id": self.judge_id, "revision": None, "dtype": None}

    def yes_no(self, questions: Sequence[YesNoQuestion]) -> list[YesNoAnswer]:
        self.asked += [q.text for q in questions]
        return [self._yes_no(q.text) for q in questions]

    def choice(self, questions: Sequence[ChoiceQuestion]) -> list[ChoiceAnswer]:
        self.asked += [q.text for q in questions]
        out = []
        for q in questions:
            chosen = self._choice(q.text, q.n_options)
            out.append(ChoiceAnswer(chosen, None, "logits") if chosen is not None else ChoiceAnswer(None, None, "text", error="no letter"))
        return out


def yes(p: float) -> YesNoAnswer:
    return YesNoAnswer(p, 1 - p, p, "logits")


# ------------------------------------------------------------------------------------------
# Functional core


def test_yes_no_probabilities_closed_form():
    logits = torch.zeros(2, 4)
    logits[1] = torch.tensor([math.log(3.0), 0.0, math.log(2.0), 0.0])  # exp: 3, 1, 2, 1 (sum 7)
    p_yes, p_no, normalized = yes_no_probabilities(logits, [0, 1, 1], [2])  # a repeated id counts once
    # Row 0: uniform over 4 -> P(yes) = 2/4, P(no) = 1/4, normalised 2/3. Row 1: 4/7, 2/7, 2/3.
    assert p_yes.tolist() == pytest.approx([0.5, 4 / 7], abs=1e-6)
    assert p_no.tolist() == pytest.approx([0.25, 2 / 7], abs=1e-6)
    assert normalized.tolist() == pytest.approx([2 / 3, 2 / 3], abs=1e-6)
    with pytest.raises(ValueError, match="two different answers"):
        answer_log_masses(logits, [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        yes_no_probabilities(logits, [0], [4])


def test_p_yes_matches_float64_softmax_and_normalisation_survives_underflow():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 4
    yes_ids, no_ids = [3, 17, 40], [5, 9]
    p_yes, p_no, normalized = yes_no_probabilities(logits.half(), yes_ids, no_ids)  # float32 math even for fp16 input
    probs = torch.softmax(logits.half().double(), dim=-1)
    assert p_yes.dtype == torch.float32
    assert torch.allclose(p_yes.double(), probs[:, yes_ids].sum(-1), atol=1e-6)
    assert torch.allclose(p_no.double(), probs[:, no_ids].sum(-1), atol=1e-6)
    assert torch.allclose(normalized.double(), probs[:, yes_ids].sum(-1) / (probs[:, yes_ids].sum(-1) + probs[:, no_ids].sum(-1)), atol=1e-6)
    # Both answers 200 nats below the rest: both probabilities underflow to 0 in float32, the
    # normalised value is still exactly sigmoid(1).
    far = torch.zeros(1, 10)
    far[0, 0], far[0, 1] = -200.0, -201.0
    p_yes, p_no, normalized = yes_no_probabilities(far, [0], [1])
    assert float(p_yes) == 0.0 and float(p_no) == 0.0
    assert float(normalized) == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-6)
    assert option_probabilities(torch.zeros(1, 4), [[0], [1, 2]]).tolist() == [pytest.approx([0.25, 0.5])]


def test_answer_threshold_is_strictly_above_half():
    assert YesNoAnswer(0.3, 0.3, 0.5, "logits").answer is False
    assert YesNoAnswer(0.3, 0.29, 0.3 / 0.59, "logits").answer is True
    assert YesNoAnswer(None, None, None, "text", error="x").answer is None


def test_gating_truth_table():
    assert gated_answer([True, True], True) is True
    assert gated_answer([True, True], False) is False
    assert gated_answer([True, False], True) is False  # a missing subject: relation not shown
    assert gated_answer([False, None], None) is False  # a "no" parent decides whatever is unknown
    assert gated_answer([True, None], True) is None
    assert gated_answer([True, True], None) is None


def test_rotations_circular_correct_and_position_bias():
    assert rotations(3) == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    assert circular_correct([2, 1, 0], [2, 1, 0]) is True
    assert circular_correct([2, 1, 1], [2, 1, 0]) is False
    assert circular_correct([None, 0, 0], [2, 1, 0]) is False  # one wrong answer decides
    assert circular_correct([None, 1, 0], [2, 1, 0]) is None
    with pytest.raises(ValueError):
        circular_correct([0], [0, 1])
    assert position_bias(["A", "A", "B", None, "C"], 4) == {"A": 50.0, "B": 25.0, "C": 25.0, "D": 0.0}
    assert position_bias([None], 2) == {"A": 0.0, "B": 0.0}


def test_distractors_and_option_order_are_seeded_and_deterministic():
    pool = ["ride", "carry", "next_to", "push", "chase", "dance"]
    first = choose_distractors(pool, 3, seed=0, key="case-1")
    assert len(first) == 3 and set(first) <= set(pool)
    assert choose_distractors(list(reversed(pool)), 3, seed=0, key="case-1") == first  # spec order does not matter
    everything = choose_distractors(pool, 10, seed=0, key="case-1")  # fewer candidates than asked: all of them
    assert len(everything) == len(pool) and set(everything) == set(pool)
    draws = {tuple(choose_distractors(pool, 3, seed=s, key="case-1")) for s in range(20)}
    assert len(draws) > 1  # the seed matters
    assert option_order(["hug", *first], 0, "case-1") == option_order([*first, "hug"], 0, "case-1")
    assert sorted(option_order(["hug", *first], 0, "case-1")) == sorted(["hug", *first])


# Strict: only the first word counts. "Answer: D" and "The answer is B." used to parse (a search
# for a letter after "answer"); the same search read "option A is wrong, B is right" as A.
@pytest.mark.parametrize(
    "text, n, expected",
    [("B", 4, 1), ("B.", 4, 1), (" C ", 4, 2), ("(C) riding", 4, 2), ("**A**", 2, 0), ("A. a dog hugging a cat", 4, 0),
     ("D", 4, 3), ("Answer: D", 4, None), ("The answer is B.", 3, None), ("Option A is wrong, B is right", 4, None),
     ("A dog hugging a cat", 4, None), ("the answer is a dog", 4, None), ("E", 4, None), ("b", 4, None), ("AB", 4, None),
     ("", 4, None), (None, 4, None)],
)
def test_parse_choice(text, n, expected):
    assert parse_choice(text, n) == expected


# Strict: "There is no way to tell." used to parse as "no" (the first "no" anywhere).
@pytest.mark.parametrize(
    "text, expected",
    [("Yes.", True), (" NO!", False), ("no", False), ("yes, it does", True), ("**Yes**, it does", True), ("NO", False),
     ('"No."', False), ("Yesterday", None), ("Nope", None), ("Noted: yes", None), ("There is no way to tell.", None),
     ("I cannot tell", None), ("Yes/No", None), ("", None), ("   ", None), (None, None)],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


def test_unparseable_reason_keeps_the_first_80_characters():
    text = "There is no way to tell " + "x" * 100
    assert unparseable_reason(text) == f"unparseable: {text[:80]}" and len(unparseable_reason(text)) == len("unparseable: ") + 80
    assert unparseable_reason("  Maybe.  ") == "unparseable: Maybe." and unparseable_reason(None) == "unparseable: "


# ------------------------------------------------------------------------------------------
# Templates and cases


def test_templates_are_pinned_to_their_version():
    assert templates.TEMPLATE_VERSION == "relbench-judge-v1"
    assert templates.relation_question(("dog", "stuffed animal"), "hugging") == "Does this image show a dog hugging a stuffed animal? Answer yes or no."
    assert templates.presence_question("astronaut") == "Is there an astronaut in this image? Answer yes or no."
    assert templates.presence_question("glasses") == "Are there glasses in this image? Answer yes or no."
    assert templates.statement(("dog", "glasses"), "wearing") == "a dog wearing glasses"
    assert templates.choice_question(("cat", "cup of coffee"), ["next to", "on top of"]) == (
        "Which option describes this image best?\nA. a cat next to a cup of coffee\nB. a cat on top of a cup of coffee\n"
        "Answer with the letter of one option."
    )
    # Any change to the wording must come with a new TEMPLATE_VERSION (then update this digest).
    text = json.dumps([templates.describe(), sorted(templates.PLURAL_NOUNS)], sort_keys=True)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == TEMPLATES_V1_DIGEST, "template text changed: bump TEMPLATE_VERSION"


TEMPLATES_V1_DIGEST = "f07702cd8fa6153e"


def test_relation_case_lists_fitting_alternatives(demo):
    by_id = {case.id: relation_case(demo, case) for case in demo.cases}
    # astronaut (person) + cat (animal): carry and on_top_of need an object second; only next_to fits.
    assert by_id["astronaut-hug-cat"] == RelationCase("hug", (("next_to", "next to"),))
    assert [rid for rid, _ in by_id["cat-on-top-of-coffee"].alternatives] == ["carry", "next_to"]
    bench = load_benchmark("relationbench")
    for case in bench.cases[:40]:
        found = relation_case(bench, case)
        cats = [bench.subjects[s].category for s in case.subjects]
        assert found.relation_id == case.relation and case.relation not in [rid for rid, _ in found.alternatives]
        for rid, _ in found.alternatives:
            assert all(c in fits for c, fits in zip(cats, bench.relations[rid].fits))


# ------------------------------------------------------------------------------------------
# Metrics over scripted judges: gating, CircularEval, failures


def test_relation_vqa_and_gated_accuracy(demo, photos, tmp_path):
    samples = demo_samples(demo, photos)[:2]  # astronaut hugging a cat; astronaut carrying a cup of coffee
    answers = {
        "Does this image show an astronaut hugging a cat? Answer yes or no.": yes(0.9),
        "Is there an astronaut in this image? Answer yes or no.": yes(0.8),
        "Is there a cat in this image? Answer yes or no.": yes(0.2),  # the cat is judged absent
        "Does this image show an astronaut carrying a cup of coffee? Answer yes or no.": yes(0.7),
        "Is there a cup of coffee in this image? Answer yes or no.": yes(0.6),
    }
    judge = ScriptedJudge(yes_no=lambda text: answers[text])
    context = RunContext(device="cpu")
    vqa = RelationVQAScore(context, judge, cache_dir=tmp_path)
    acc = RelationAccuracy(context, judge, cache_dir=tmp_path)
    v = vqa.score(samples)
    asked = len(judge.asked)
    a = acc.score(samples)
    assert [r.value for r in v] == pytest.approx([90.0, 70.0])  # ungated VQAScore
    assert [r.value for r in a] == [0.0, 100.0]  # gated: the cat is missing in the first image
    assert v[0].details["gated_shown"] == 0.0 and v[0].details["relation_yes"] == 1.0
    assert v[0].details["present_cat"] == 0.0 and v[0].details["presence_cat"] == pytest.approx(0.2)
    assert v[0].details["p_yes"] == pytest.approx(0.9) and v[0].details["p_yes_normalized"] == pytest.approx(0.9)
    assert a[1].details["gated_shown"] == 1.0
    # 2 relation + 2 x 2 presence questions (the astronaut once per image); relation_acc re-used
    # relation_vqa's answers from the cache and asked nothing.
    assert asked == len(judge.asked) == 6
    assert RelationVQAScore.value_range == (0.0, 100.0) and RelationVQAScore.higher_is_better


def test_failed_answers_give_nan_not_zero(demo, photos, tmp_path):
    samples = demo_samples(demo, photos)[:1]

    def answer(text: str) -> YesNoAnswer:
        if text.startswith("Does"):
            return YesNoAnswer(None, None, None, "text", raw_text="Maybe?", error="unparseable answer")
        return yes(0.9)

    results = RelationVQAScore(RunContext(device="cpu"), ScriptedJudge(yes_no=answer), cache_dir=tmp_path).score(samples)
    assert math.isnan(results[0].value)
    assert results[0].details["errors"] == {"relation": "unparseable answer"} and results[0].details["raw_text"] == {"relation": "Maybe?"}
    assert results[0].details["reason"] == "judge answer failed: relation: unparseable answer" and results[0].details["retry"] is True
    assert results[0].details["relation_shown"] is None  # no verdict for the report's filter either
    acc = RelationAccuracy(RunContext(device="cpu"), ScriptedJudge(yes_no=answer), cache_dir=tmp_path / "b").score(samples)
    assert math.isnan(acc[0].value) and acc[0].details["retry"] is True
    # A failure is a failure in every metric reading it, even where the other answers would decide
    # (this pinned 0.0 before: a subject judged absent "decided" the gated result; the row's
    # relation_vqa was NaN at the same time, and a resumed run would not have retried it).
    absent = ScriptedJudge(yes_no=lambda t: answer(t) if t.startswith("Does") else yes(0.1))
    gated = RelationAccuracy(RunContext(device="cpu"), absent, cache_dir=tmp_path / "c").score(samples)[0]
    assert math.isnan(gated.value) and gated.details["present_cat"] == 0.0 and gated.details["gated_shown"] is None
    # A failed presence answer makes relation_vqa NaN too: it reads the same answers as relation_acc.
    presence_fails = ScriptedJudge(yes_no=lambda t: YesNoAnswer(None, None, None, "none", error="HTTP 500") if "cat" in t and t.startswith("Is") else yes(0.9))
    vqa = RelationVQAScore(RunContext(device="cpu"), presence_fails, cache_dir=tmp_path / "e").score(samples)[0]
    assert math.isnan(vqa.value) and vqa.details["p_yes_normalized"] == pytest.approx(0.9) and vqa.details["errors"] == {"cat": "HTTP 500"}
    # Failures are not cached on disk: the next run (a new judge cache) asks again; within one run
    # the failed answer is the answer (the same metric scoring again asks nothing).
    judge = ScriptedJudge(yes_no=answer)
    metric = RelationVQAScore(RunContext(device="cpu"), judge, cache_dir=tmp_path / "d")
    metric.score(samples)
    metric.score(samples)
    assert judge.asked.count("Does this image show an astronaut hugging a cat? Answer yes or no.") == 1
    RelationVQAScore(RunContext(device="cpu"), judge, cache_dir=tmp_path / "d").score(samples)
    assert judge.asked.count("Does this image show an astronaut hugging a cat? Answer yes or no.") == 2
    assert judge.asked.count("Is there a cat in this image? Answer yes or no.") == 1


def test_circular_eval_always_a_scores_zero_and_shows_position_bias(demo, photos, tmp_path):
    samples = demo_samples(demo, photos, wired=True)
    metric = RelationMultipleChoice(RunContext(device="cpu"), ScriptedJudge(choice=lambda text, n: 0), cache_dir=tmp_path)
    results = metric.score(samples)
    assert [r.value for r in results] == [0.0, 0.0, 0.0, 0.0]
    assert metric.position_bias()["A"] == 100.0 and sum(metric.position_bias().values()) == 100.0
    rows = [r.details for r in results] + [{"skipped": "no other relation of the benchmark fits these subjects"}]
    assert position_bias_of_rows(rows) == metric.position_bias() == {"A": 100.0, "B": 0.0, "C": 0.0}
    # Each rotation puts the true relation at another letter: exactly one "A" answer was right.
    for result in results:
        assert result.details["rotations_correct"] == 1
        assert sorted(result.details["expected_letters"]) == [chr(65 + i) for i in range(result.details["n_options"])]
        assert set(result.details["chosen_letters"]) == {"A"}


def test_circular_eval_oracle_scores_100_and_spreads_letters(demo, photos, tmp_path):
    samples = demo_samples(demo, photos)
    truths = {true_statement(s) for s in samples}

    def oracle(text: str, n: int) -> int:
        statements = option_statements(text)
        assert len(statements) == n
        return next(i for i, s in enumerate(statements) if s in truths)

    metric = RelationMultipleChoice(RunContext(device="cpu"), ScriptedJudge(choice=oracle), benchmark=demo,
                                    cache_dir=tmp_path, distractors=3)
    results = metric.score(samples)
    assert [r.value for r in results] == [100.0] * 4
    # next_to is the only other relation for astronaut + cat; the other cases (person or animal
    # with an object) have two fitting alternatives each.
    assert results[0].details["options"] in (["hug", "next_to"], ["next_to", "hug"])
    assert sorted(results[3].details["options"]) == ["carry", "next_to", "on_top_of"]
    assert [r.details["n_options"] for r in results] == [2, 3, 3, 3]
    # An oracle under CircularEval picks each position once per case: A 4, B 4, C 3 of 11 answers.
    assert metric.position_bias() == pytest.approx({"A": 400 / 11, "B": 400 / 11, "C": 300 / 11})


def test_circular_eval_one_wrong_rotation_is_wrong_and_failures_are_nan(demo, photos, tmp_path):
    samples = demo_samples(demo, photos)[1:2]  # 3 options
    truths = {true_statement(s) for s in samples}
    calls = {"n": 0}

    def flaky(text: str, n: int) -> int | None:
        calls["n"] += 1
        right = next(i for i, s in enumerate(option_statements(text)) if s in truths)
        return (right + 1) % n if calls["n"] == 2 else right

    r = RelationMultipleChoice(RunContext(device="cpu"), ScriptedJudge(choice=flaky), benchmark=demo, cache_dir=tmp_path).score(samples)
    assert r[0].value == 0.0 and r[0].details["rotations_correct"] == 2 and "retry" not in r[0].details
    failing = ScriptedJudge(choice=lambda text, n: None)
    r = RelationMultipleChoice(RunContext(device="cpu"), failing, benchmark=demo, cache_dir=tmp_path / "b").score(samples)
    assert math.isnan(r[0].value) and set(r[0].details["errors"]) == {"rotation_0", "rotation_1", "rotation_2"}
    assert r[0].details["retry"] is True and r[0].details["reason"].startswith("judge answer failed: rotation_0: no letter")
    # One rotation failed, another answered wrong: NaN, not 0 (a failure is never a number).
    calls["n"] = 0

    def wrong_then_failed(text: str, n: int) -> int | None:
        calls["n"] += 1
        right = next(i for i, s in enumerate(option_statements(text)) if s in truths)
        return (right + 1) % n if calls["n"] == 1 else None if calls["n"] == 2 else right

    r = RelationMultipleChoice(RunContext(device="cpu"), ScriptedJudge(choice=wrong_then_failed), benchmark=demo,
                               cache_dir=tmp_path / "c").score(samples)
    assert math.isnan(r[0].value) and set(r[0].details["errors"]) == {"rotation_1"}


def test_relation_mc_reads_the_benchmark_from_the_sample_or_the_metric(demo, photos, tmp_path):
    bare = demo_samples(demo, photos)[0]
    metric = RelationMultipleChoice(RunContext(device="cpu"), ScriptedJudge(), cache_dir=tmp_path)
    with pytest.raises(RelbenchError, match="benchmark="):
        metric.score([bare])
    # As the runner fills samples (relation id, categories, benchmark), no benchmark= is needed,
    # and the options are the same as when the metric is given the benchmark.
    wired = demo_samples(demo, photos, wired=True)
    from_samples = metric.score(wired)
    from_metric = RelationMultipleChoice(RunContext(device="cpu"), ScriptedJudge(), benchmark=demo, cache_dir=tmp_path).score(demo_samples(demo, photos))
    assert [r.details["options"] for r in from_samples] == [r.details["options"] for r in from_metric]
    # A benchmark where nothing else fits: no multiple choice, NaN with the reason.
    lonely = dataclasses.replace(demo, relations={"hug": demo.relations["hug"]})
    result = metric.score([dataclasses.replace(wired[0], benchmark=lonely)])[0]
    assert math.isnan(result.value) and "skipped" in result.details


# ------------------------------------------------------------------------------------------
# The cache


def test_cache_keys_on_image_question_judge_and_version(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "relbench" / "judge"
    judge = ScriptedJudge(yes_no=lambda text: yes(0.75))
    cache = JudgeCache(tmp_path / "c")
    q = YesNoQuestion(photos["astronaut"], "Is there a cat in this image? Answer yes or no.")
    first = CachedJudge(judge, cache).yes_no([q, q])  # a duplicate is asked once
    assert len(judge.asked) == 1 and first[0] == first[1] == yes(0.75)
    again = CachedJudge(judge, cache)  # a new process: disk only
    assert again.yes_no([q]) == [yes(0.75)] and again.hits == 1 and len(judge.asked) == 1
    files = list((tmp_path / "c").rglob("*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["key"]["template_version"] == "relbench-judge-v1" and record["key"]["judge"] == "scripted-v1"
    # Another image, question or judge identity misses.
    again.yes_no([YesNoQuestion(photos["chelsea"], q.text), YesNoQuestion(q.image, "Is there a dog in this image? Answer yes or no.")])
    assert len(judge.asked) == 3
    other = ScriptedJudge(yes_no=lambda text: yes(0.1))
    other.identity = lambda: "scripted-v2"  # type: ignore[method-assign]
    assert CachedJudge(other, cache).yes_no([q]) == [yes(0.1)]
    # A damaged file is a miss, and the fresh answer replaces it.
    files[0].write_text("{not json")
    assert CachedJudge(judge, cache).yes_no([q]) == [yes(0.75)] and len(judge.asked) == 4
    assert json.loads(files[0].read_text())["answer"]["normalized"] == 0.75
    assert not [p for p in (tmp_path / "c").rglob("*") if p.name.endswith(".tmp")]
    # A judge without a stable identity (built in memory) is never written to disk.
    unstable = ScriptedJudge()
    unstable.identity = lambda: None  # type: ignore[method-assign]
    CachedJudge(unstable, JudgeCache(tmp_path / "u")).yes_no([q])
    assert not (tmp_path / "u").exists()


# ------------------------------------------------------------------------------------------
# The local judge on the tiny random Qwen2.5-VL


@pytest.fixture(scope="module")
def tiny_judge() -> LocalVLMJudge:
    return LocalVLMJudge(RunContext(device="cpu"), batch_size=4)


def manual_logits(judge: LocalVLMJudge, image: Image.Image, question: str) -> torch.Tensor:
    """Logits at the first generated position from one plain full forward of the whole prompt."""
    processor, model = judge.processor, judge.model
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == len(processor.tokenizer)
    return logits[0, -1]


def manual_first_token_probs(judge: LocalVLMJudge, image: Image.Image, question: str) -> torch.Tensor:
    """Softmax over the full vocabulary at the first generated position, computed here."""
    return torch.softmax(manual_logits(judge, image, question).double(), dim=-1)


def test_tiny_vlm_p_yes_equals_manual_softmax(tiny_judge, photos):
    tokenizer = tiny_judge.processor.tokenizer
    yes_ids = [tokenizer.encode(s, add_special_tokens=False) for s in YES_SPELLINGS]
    no_ids = [tokenizer.encode(s, add_special_tokens=False) for s in NO_SPELLINGS]
    assert all(len(ids) == 1 for ids in yes_ids + no_ids)  # the offline tokenizer spells each as one token
    yes_ids, no_ids = [ids[0] for ids in yes_ids], [ids[0] for ids in no_ids]
    assert len(set(yes_ids)) == 4 and len(set(no_ids)) == 4
    assert tiny_judge.settings()["answer_tokens"] == {"yes": dict(zip(YES_SPELLINGS, yes_ids)), "no": dict(zip(NO_SPELLINGS, no_ids))}

    question = templates.relation_question(("astronaut", "cat"), "hugging")
    probs = manual_first_token_probs(tiny_judge, photos["astronaut"], question)
    expected_yes, expected_no = float(probs[yes_ids].sum()), float(probs[no_ids].sum())
    [answer] = tiny_judge.yes_no([YesNoQuestion(photos["astronaut"], question)])
    assert answer.source == "logits"
    assert answer.p_yes == pytest.approx(expected_yes, rel=1e-5)
    assert answer.p_no == pytest.approx(expected_no, rel=1e-5)
    assert answer.normalized == pytest.approx(expected_yes / (expected_yes + expected_no), abs=1e-6)
    # A random model spreads its mass over ~15k tokens: both answers are small but not zero.
    assert 0 < answer.p_yes < 0.01 and 0 < answer.p_no < 0.01


def test_tiny_vlm_batches_equal_single_questions(tiny_judge, photos):
    # Three image shapes: different numbers of image tokens, so the batch is left-padded.
    questions = [
        YesNoQuestion(photos["astronaut"], "Is there an astronaut in this image? Answer yes or no."),
        YesNoQuestion(photos["chelsea"], "Does this image show a cat next to a rocket? Answer yes or no."),
        YesNoQuestion(photos["rocket"], "Is there a rocket in this image? Answer yes or no."),
    ]
    batched = tiny_judge.yes_no(questions)
    single = [tiny_judge.yes_no([q])[0] for q in questions]
    for b, s in zip(batched, single):
        assert b.p_yes == pytest.approx(s.p_yes, rel=1e-4) and b.normalized == pytest.approx(s.normalized, abs=1e-5)
    assert len({round(a.normalized, 6) for a in batched}) == 3  # different inputs, different answers


def test_tiny_vlm_choice_is_argmax_of_letter_mass(tiny_judge, photos):
    question = templates.choice_question(("cat", "cup of coffee"), ["next to", "on top of", "carrying"])
    probs = manual_first_token_probs(tiny_judge, photos["chelsea"], question)
    tokenizer = tiny_judge.processor.tokenizer
    letter_mass = []
    for letter in "ABC":
        ids = [ids[0] for ids in (tokenizer.encode(s, add_special_tokens=False) for s in (letter, f" {letter}")) if len(ids) == 1]
        letter_mass.append(float(probs[ids].sum()))
    [answer] = tiny_judge.choice([ChoiceQuestion(photos["chelsea"], question, 3)])
    assert answer.probabilities == pytest.approx(tuple(letter_mass), rel=1e-5)
    assert answer.choice == max(range(3), key=lambda i: letter_mass[i])


def test_bfloat16_judge_runs_and_is_recorded(tiny_judge, photos):
    # The GPU default: weights and pixels in bfloat16, probabilities still computed in float32.
    judge = LocalVLMJudge(RunContext(device="cpu"), dtype="bfloat16")
    question = YesNoQuestion(photos["astronaut"], "Is there an astronaut in this image? Answer yes or no.")
    [half] = judge.yes_no([question])
    [full] = tiny_judge.yes_no([question])
    assert judge.model.dtype == torch.bfloat16 and judge.settings()["dtype"] == "bfloat16"
    assert half.normalized == pytest.approx(full.normalized, abs=0.02) and half.p_yes == pytest.approx(full.p_yes, rel=0.1)
    assert half.p_yes != full.p_yes  # it really ran in another precision


def count_vision_forwards(judge: LocalVLMJudge) -> list[int]:
    """One entry per forward of the judge's vision tower (the number of images it encoded)."""
    calls: list[int] = []
    judge.model.model.visual.register_forward_hook(lambda module, args, kwargs, output: calls.append(int(kwargs["grid_thw"].shape[0])), with_kwargs=True)
    return calls


VQA_QUESTIONS = (
    "Does this image show an astronaut hugging a cat? Answer yes or no.",
    "Is there an astronaut in this image? Answer yes or no.",
    "Is there a cat in this image? Answer yes or no.",
)


def test_tiny_vlm_encodes_each_image_once_and_matches_a_full_forward_per_question(photos):
    judge = LocalVLMJudge(RunContext(device="cpu"), batch_size=2)  # 3 yes/no questions: chunks of 2 and 1
    assert judge.shares_prefix and judge.settings()["encoding"].startswith("image and chat prefix encoded once per image")
    vision = count_vision_forwards(judge)
    # Square and landscape photos: 4 and 2 image tokens, so the prefixes differ in length and M-RoPE grid.
    images = [photos["astronaut"], photos["chelsea"]]
    yes_no = [YesNoQuestion(image, text) for text in VQA_QUESTIONS for image in images]  # images interleaved
    choice_text = [templates.choice_question(("astronaut", "cat"), [a, b, c, d])
                   for a, b, c, d in (("hugging", "next to", "on", "riding"), ("next to", "on", "riding", "hugging"),
                                      ("on", "riding", "hugging", "next to"), ("riding", "hugging", "next to", "on"))]
    choices = [ChoiceQuestion(image, text, 4) for image in images for text in choice_text]
    yes_no_answers = judge.yes_no(yes_no)
    choice_answers = judge.choice(choices)  # relation_mc's rotations after relation_vqa's questions
    assert vision == [1, 1]  # one vision-tower forward per image for all 7 questions (before: 14)

    yes_ids, no_ids = list(judge.yes_ids.values()), list(judge.no_ids.values())
    for question, answer in zip(yes_no, yes_no_answers):
        logits = manual_logits(judge, question.image, question.text)
        probs = torch.softmax(logits.double(), dim=-1)
        expected_yes, expected_no = float(probs[yes_ids].sum()), float(probs[no_ids].sum())
        assert answer.p_yes == pytest.approx(expected_yes, rel=1e-4)
        assert answer.normalized == pytest.approx(expected_yes / (expected_yes + expected_no), abs=1e-4)
        encoded = len(vision)  # manual_logits ran the vision tower; the judge reuses its memo
        [row] = judge.first_token_logits([question.image], [question.text])
        assert len(vision) == encoded and float((row - logits).abs().max()) < 1e-4
    for question, answer in zip(choices, choice_answers):
        probs = torch.softmax(manual_logits(judge, question.image, question.text).double(), dim=-1)
        mass = [float(probs[list(judge.letter_ids(i).values())].sum()) for i in range(4)]
        assert answer.probabilities == pytest.approx(tuple(mass), rel=1e-4)
    assert len({round(a.normalized, 6) for a in yes_no_answers}) == 6  # six inputs, six answers


def test_tiny_vlm_prefix_memo_evicts_the_least_recent_image(photos, monkeypatch):
    from relbench.metrics.relation_judge import local

    monkeypatch.setattr(local, "PREFIX_MEMO_IMAGES", 1)
    judge = LocalVLMJudge(RunContext(device="cpu"))
    vision = count_vision_forwards(judge)
    question = VQA_QUESTIONS[1]
    first = judge.yes_no([YesNoQuestion(photos["astronaut"], question)])[0]
    judge.yes_no([YesNoQuestion(photos["coffee"], question)])
    again = judge.yes_no([YesNoQuestion(photos["astronaut"], question)])[0]
    assert len(vision) == 3  # the astronaut was evicted by the coffee, then encoded again
    assert again.p_yes == first.p_yes  # the memo's cache is copied for each use, never extended


def test_tiny_vlm_template_without_a_shared_prefix_asks_one_full_forward_per_question(photos):
    # Plain text between the image and the question: the question's first tokens could merge with
    # it, so the judge does not split the prompt there and encodes the image with every question.
    model, processor = tiny_vlm(seed=0)
    processor.chat_template = local_template = processor.chat_template.replace("<|vision_end|>", "<|vision_end|>Question: ")
    assert "Question: " in local_template
    judge = LocalVLMJudge(RunContext(device="cpu"), (model, processor))
    assert not judge.shares_prefix and judge.settings()["encoding"] == "one full forward per question (image encoded with each question)"
    vision = count_vision_forwards(judge)
    questions = [YesNoQuestion(photos["astronaut"], text) for text in VQA_QUESTIONS]
    answers = judge.yes_no(questions)
    assert sum(vision) == 3
    for question, answer in zip(questions, answers):
        probs = torch.softmax(manual_logits(judge, question.image, question.text).double(), dim=-1)
        assert answer.p_yes == pytest.approx(float(probs[list(judge.yes_ids.values())].sum()), rel=1e-4)


def test_tiny_profile_metrics_record_judge_settings(photos, demo, tmp_path):
    context = RunContext(device="cpu", seed=0)
    samples = demo_samples(demo, photos)[:2]
    vqa = RelationVQAScore(context, cache_dir=tmp_path)
    mc = RelationMultipleChoice(context, benchmark=demo, cache_dir=tmp_path)
    assert vqa.judge.judge is mc.judge.judge  # one model per run context
    results = vqa.score(samples)
    direct = vqa.judge.judge.yes_no([YesNoQuestion(samples[0].image, templates.relation_question(samples[0].subject_nouns, "hugging"))])[0]
    assert results[0].value == pytest.approx(100 * direct.normalized, abs=1e-4)
    for metric in (vqa, mc):
        settings = metric.settings()
        assert settings["judge_id"] == "tiny:judge" and settings["revision"] is None and settings["dtype"] == "float32"
        assert settings["template_version"] == "relbench-judge-v1" and settings["seed"] == 0
        assert settings["model_class"] == "transformers.Qwen2_5_VLForConditionalGeneration"
        json.dumps(settings)  # goes into samples.jsonl as is
    assert not (tmp_path / "relbench").exists() and not list(tmp_path.rglob("*.json"))  # tiny random answers stay in memory
    mc_results = mc.score(samples)
    assert all(r.value in (0.0, 100.0) for r in mc_results)
    json.dumps([r.details for r in results + mc_results])


@pytest.fixture(scope="module")
def saved_tiny_judge(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-judge")
    model, processor = tiny_vlm(seed=3)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_judge_loads_from_a_local_folder_and_caches_on_disk(saved_tiny_judge, photos, tmp_path):
    context = RunContext(profile="full", device="cpu", model_overrides={"judge": str(saved_tiny_judge)})
    judge = LocalVLMJudge(context)
    assert judge.judge_id == str(saved_tiny_judge) and type(judge.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    in_memory = LocalVLMJudge(RunContext(device="cpu", seed=3))
    question = YesNoQuestion(photos["coffee"], "Is there a cup of coffee in this image? Answer yes or no.")
    assert judge.yes_no([question])[0].p_yes == pytest.approx(in_memory.yes_no([question])[0].p_yes, rel=1e-5)
    assert judge.identity() is not None and str(saved_tiny_judge) in judge.identity()
    settings = judge.settings()
    assert settings["judge_id"] == str(saved_tiny_judge) and settings["dtype"] == "float32" and "revision" in settings

    # Scoring again in a new process (new judge, same cache folder) runs no forward pass.
    sample = ScoringSample("c", photos["coffee"], "p", "next to", ("cat", "coffee"), ("cat", "cup of coffee"), ((), ()))
    first = RelationVQAScore(context, judge, cache_dir=tmp_path).score([sample])
    assert len(list(tmp_path.rglob("*.json"))) == 3
    fresh = LocalVLMJudge(context)
    calls = []
    original = fresh.first_token_logits
    fresh.first_token_logits = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
    second = RelationVQAScore(context, fresh, cache_dir=tmp_path).score([sample])
    assert calls == [] and second[0].value == first[0].value and second[0].details == first[0].details


def test_judge_load_errors_are_one_line(saved_tiny_judge, tmp_path):
    only_tokenizer, only_processor = tmp_path / "only-tokenizer", tmp_path / "only-processor"
    processor = tiny_vlm(seed=0)[1]
    processor.tokenizer.save_pretrained(only_tokenizer)
    processor.save_pretrained(only_processor)
    cases = {
        str(tmp_path / "missing"): "no such folder",
        str(only_tokenizer): "no image processor or no tokenizer; is it a chat VLM",
        str(only_processor): "cannot load AutoModelForImageTextToText",
        "nobody/no-such-vlm": "cannot load AutoProcessor",
    }
    for source, expected in cases.items():
        context = RunContext(profile="full", device="cpu", model_overrides={"judge": source})
        with pytest.raises(RelbenchError, match=expected) as info:
            LocalVLMJudge(context)
        assert "\n" not in str(info.value)
    with pytest.raises(RelbenchError, match="dtype"):
        LocalVLMJudge(RunContext(profile="full", device="cpu", model_overrides={"judge": str(saved_tiny_judge)}), dtype="float64")


# ------------------------------------------------------------------------------------------
# The API judge against a loopback OpenAI-compatible server


def relation_answers(absent: set[str] = frozenset(), shown: bool = True) -> Callable[[dict[str, Any]], Reply]:
    """Text answers: subjects present unless listed in ``absent``; the relation as ``shown``."""

    def answer(body: dict[str, Any]) -> Reply:
        question = question_of(body)
        if question.startswith("Does"):
            return Reply("Yes, it does." if shown else "No.")
        noun = re.match(r"(?:Is|Are) there (?:an? )?(.*) in this image", question).group(1)
        return Reply("No" if noun in absent else "Yes")

    return answer


def api_judge(server: FakeOpenAI, **options: Any) -> APIJudge:
    options = {"api_key": API_KEY, "backoff": 0.01, "timeout": 5.0, "concurrency": 2, "jitter": lambda: 0.0, **options}
    return APIJudge("fake-vlm", base_url=server.url, **options)


def test_api_judge_text_answers_and_request_shape(demo, photos, tmp_path):
    samples = demo_samples(demo, photos)[:2]
    with FakeOpenAI(relation_answers(absent={"cat"}), logprobs=False) as server:
        judge = api_judge(server)
        vqa = RelationVQAScore(RunContext(device="cpu"), judge, cache_dir=tmp_path).score(samples)
        acc = RelationAccuracy(RunContext(device="cpu"), judge, cache_dir=tmp_path).score(samples)
        assert server.count == 6  # per image: relation + 2 presence questions; relation_acc read the cache
        body = server.log[0].body
    assert [r.value for r in vqa] == [100.0, 100.0] and [r.value for r in acc] == [0.0, 100.0]
    assert vqa[0].details["answer_source"] == "text" and vqa[0].details["served_model"] == "fake-vlm-2026-01-01"
    assert server.log[0].authorization == f"Bearer {API_KEY}"
    assert body["temperature"] == 0 and body["model"] == "fake-vlm" and body["logprobs"] is True
    # The image travels inline as a lossless PNG: the server sees the very pixels.
    url = image_url_of(body)
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    assert sent.tobytes() in (photos["astronaut"].tobytes(), photos["chelsea"].tobytes())


def test_api_judge_logprobs_path(photos, tmp_path):
    top = [("Yes", math.log(0.6)), (" yes", math.log(0.1)), ("No", math.log(0.2)), ("Maybe", math.log(0.05))]
    with FakeOpenAI(lambda body: Reply("Yes", top)) as server:
        [answer] = api_judge(server).yes_no([YesNoQuestion(photos["astronaut"], "Is there an astronaut in this image? Answer yes or no.")])
        assert server.log[0].body["top_logprobs"] == 20
    assert answer.source == "logprobs"
    assert answer.p_yes == pytest.approx(0.7) and answer.p_no == pytest.approx(0.2)
    assert answer.normalized == pytest.approx(0.7 / 0.9)


def test_api_judge_falls_back_to_text_when_logprobs_are_refused(photos):
    with FakeOpenAI(lambda body: Reply("no"), reject_logprobs=True) as server:
        judge = api_judge(server, concurrency=1)
        answers = judge.yes_no([YesNoQuestion(photos["astronaut"], f"Is there a {noun} in this image? Answer yes or no.") for noun in ("dog", "cat")])
        statuses = [entry.status for entry in server.log]
        with_logprobs = [bool(entry.body.get("logprobs")) for entry in server.log]
    assert [(a.source, a.normalized) for a in answers] == [("text", 0.0), ("text", 0.0)]
    assert statuses == [400, 200, 200] and with_logprobs == [True, False, False]  # refused once, then never asked
    assert judge.logprobs_supported is False


def test_api_judge_garbage_is_a_recorded_failure(demo, photos, tmp_path):
    samples = demo_samples(demo, photos)[:1]
    with FakeOpenAI(relation_answers()) as server:
        server.faults = ["garbage"]  # the first request (the relation question) gets an HTML page
        results = RelationVQAScore(RunContext(device="cpu"), api_judge(server, concurrency=1), cache_dir=tmp_path).score(samples)
    assert math.isnan(results[0].value)
    assert results[0].details["errors"]["relation"].startswith("malformed response")
    assert results[0].details["raw_text"]["relation"] == "<html>upstream proxy error</html>"
    assert results[0].details["present_astronaut"] == 1.0  # the other questions were answered


def test_api_judge_unparseable_text_is_a_failure_with_raw_text(photos):
    with FakeOpenAI(lambda body: Reply("I would rather not say.")) as server:
        [answer] = api_judge(server).yes_no([YesNoQuestion(photos["astronaut"], "Is there a cat in this image? Answer yes or no.")])
        [choice] = api_judge(server).choice([ChoiceQuestion(photos["astronaut"], "Which?\nA. x\nB. y\nAnswer.", 2)])
    assert answer.failed and answer.raw_text == "I would rather not say." and answer.error == "unparseable: I would rather not say."
    assert choice.failed and choice.raw_text == "I would rather not say." and choice.error == "unparseable: I would rather not say."


def test_api_judge_retries_429_and_500_then_succeeds(photos):
    delays: list[float] = []
    with FakeOpenAI(lambda body: Reply("Yes")) as server:
        server.faults = [429, 500]
        [answer] = api_judge(server, sleep=delays.append).yes_no([YesNoQuestion(photos["astronaut"], "Is there a cat in this image? Answer yes or no.")])
        statuses = [entry.status for entry in server.log]
    assert statuses == [429, 500, 200] and answer.normalized == 1.0 and not answer.failed
    assert delays == [0.0, pytest.approx(0.02)]  # Retry-After: 0, then backoff 0.01 x 2


def test_api_judge_persistent_500_is_a_recorded_failure(photos):
    delays: list[float] = []
    with FakeOpenAI(lambda body: Reply("Yes")) as server:
        server.faults = [500] * 10
        [answer] = api_judge(server, attempts=3, sleep=delays.append).yes_no(
            [YesNoQuestion(photos["astronaut"], "Is there a cat in this image? Answer yes or no.")])
        assert server.count == 3
    assert answer.failed and answer.error == "HTTP 500 (gave up after 3 attempts)"
    assert delays == pytest.approx([0.01, 0.02])


def test_api_judge_slow_answer_times_out(photos):
    import time

    with FakeOpenAI(lambda body: Reply("Yes")) as server:
        server.faults = [("slow", 5.0)]
        began = time.perf_counter()
        [answer] = api_judge(server, timeout=0.3, attempts=1).yes_no(
            [YesNoQuestion(photos["astronaut"], "Is there a cat in this image? Answer yes or no.")])
        took = time.perf_counter() - began
    assert answer.failed and answer.error == "timed out after 0.3 s (gave up after 1 attempts)"
    assert took < 2.0


def test_api_judge_unreachable_server_is_a_recorded_failure(photos):
    import socket

    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    delays: list[float] = []
    judge = APIJudge("fake-vlm", base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, attempts=2, backoff=0.5,
                     sleep=delays.append, jitter=lambda: 0.0)
    [answer] = judge.yes_no([YesNoQuestion(photos["astronaut"], "Is there a cat in this image? Answer yes or no.")])
    assert answer.failed and answer.error == "request failed: ConnectionError (gave up after 2 attempts)"
    assert delays == [0.5] and judge.requests_sent == 2


def test_api_judge_wrong_key_ends_the_run_with_one_line(photos):
    with FakeOpenAI() as server:
        server.faults = [401]
        with pytest.raises(RelbenchError, match="HTTP 401") as info:
            api_judge(server).yes_no([YesNoQuestion(photos["astronaut"], "Is there a cat in this image? Answer yes or no.")])
    assert "\n" not in str(info.value) and API_KEY not in str(info.value) and "OPENAI_API_KEY" in str(info.value)


def test_api_key_never_reaches_results_cache_settings_or_logs(demo, photos, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    samples = demo_samples(demo, photos)[:2]

    def echo(body: dict[str, Any]) -> Reply:  # a server that repeats the key back in its answer
        return Reply(f"Yes. (request authorised with {API_KEY})") if question_of(body).startswith("Does") else Reply("Yes")

    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(echo) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        server.faults = [429, "garbage", 500]
        context = RunContext(device="cpu", model_overrides={"judge": "api:fake-vlm"})
        judge = build_judge(context, api_options={"backoff": 0.0, "concurrency": 1})
        assert isinstance(judge, APIJudge) and API_KEY not in repr(vars(judge))
        vqa = RelationVQAScore(context, judge, cache_dir=tmp_path / "cache")
        mc = RelationMultipleChoice(context, judge, benchmark=demo, cache_dir=tmp_path / "cache")
        results = vqa.score(samples) + mc.score(samples)
        assert server.log[0].authorization == f"Bearer {API_KEY}"  # it was sent...
    dumped = json.dumps([vqa.settings(), mc.settings(), [r.details for r in results], [r.value for r in results]])
    assert "Bearer" not in dumped and API_KEY not in dumped  # ...and never written anywhere
    cache_text = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert "(request authorised with ***)" in cache_text and API_KEY not in cache_text  # the echo was masked
    assert results[1].value == 100.0  # and still read as "yes"
    # The first relation question met 429 then garbage: a recorded failure, the run went on.
    assert math.isnan(results[0].value) and results[0].details["errors"]["relation"].startswith("malformed")
    assert caplog.records and API_KEY not in caplog.text
    assert vqa.settings()["base_url"] == server.url and "api_key" not in json.dumps(vqa.settings())


def test_api_cache_hit_sends_no_request(demo, photos, tmp_path):
    samples = demo_samples(demo, photos)
    with FakeOpenAI(relation_answers()) as server:
        first = RelationVQAScore(RunContext(device="cpu"), api_judge(server), cache_dir=tmp_path).score(samples)
        sent = server.count
        # A new metric, judge and in-memory cache: only the disk cache can answer.
        again = RelationVQAScore(RunContext(device="cpu"), api_judge(server), cache_dir=tmp_path).score(samples)
        assert server.count == sent > 0
        # Another template version or another model misses the cache.
        other = APIJudge("other-vlm", base_url=server.url, api_key=API_KEY)
        RelationVQAScore(RunContext(device="cpu"), other, cache_dir=tmp_path).score(samples[:1])
        assert server.count == sent + 3
    assert [r.value for r in again] == [r.value for r in first] == [100.0] * 4


def test_api_settings_and_multiple_choice(demo, photos, tmp_path):
    samples = demo_samples(demo, photos)
    truths = {true_statement(s) for s in samples}

    def oracle(body: dict[str, Any]) -> Reply:
        statements = option_statements(question_of(body))
        return Reply(f"{chr(65 + next(i for i, s in enumerate(statements) if s in truths))}.")

    with FakeOpenAI(oracle) as server:
        metric = RelationMultipleChoice(RunContext(device="cpu"), api_judge(server), benchmark=demo, cache_dir=tmp_path)
        assert [r.value for r in metric.score(samples)] == [100.0] * 4
        settings = metric.settings()
    with FakeOpenAI(lambda body: Reply("A")) as server:
        always_a = RelationMultipleChoice(RunContext(device="cpu"), api_judge(server), benchmark=demo, cache_dir=tmp_path / "a")
        assert [r.value for r in always_a.score(samples)] == [0.0] * 4
        assert always_a.position_bias()["A"] == 100.0
    for key in ("judge_id", "revision", "dtype", "template_version"):
        assert key in settings
    assert settings["judge_id"] == "api:fake-vlm" and settings["template_version"] == templates.TEMPLATE_VERSION
    assert settings["distractors"] == 3 and settings["temperature"] == 0


def test_api_judge_refuses_bad_options():
    with pytest.raises(RelbenchError, match="logprobs"):
        APIJudge("m", base_url="http://127.0.0.1:9/v1", logprobs="maybe")
    with pytest.raises(RelbenchError, match="http"):
        APIJudge("m", base_url="ftp://example.org/v1")
    with pytest.raises(RelbenchError, match="revision"):
        build_judge(RunContext(device="cpu", model_overrides={"judge": "api:gpt-4o@2024"}))


# ------------------------------------------------------------------------------------------
# Retries that survive a rate limit; transport settings


CAT_QUESTION = "Is there a cat in this image? Answer yes or no."


def test_retry_after_seconds_and_http_date():
    now = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(" 1.5 ", now) == 1.5
    assert retry_after_seconds("-3", now) == 0.0
    assert retry_after_seconds("Fri, 15 Jan 2027 08:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Fri, 15 Jan 2027 07:59:00 GMT", now) == 0.0  # already past
    for unreadable in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(unreadable, now) is None


def test_api_judge_honours_retry_after_in_both_forms(photos):
    waits: list[float] = []
    with FakeOpenAI(lambda body: Reply("Yes")) as server:
        server.faults = [(429, "7"), (503, "Fri, 15 Jan 2027 08:00:30 GMT")]
        judge = api_judge(server, backoff=1.0, sleep=waits.append, clock=lambda: 1_800_000_000.0)
        [answer] = judge.yes_no([YesNoQuestion(photos["astronaut"], CAT_QUESTION)])
        statuses = [entry.status for entry in server.log]
    assert statuses == [429, 503, 200] and answer.normalized == 1.0
    assert waits == [7.0, 30.0]  # what the server asked for, not the 1 s / 2 s backoff, nor capped


def test_api_judge_backoff_is_exponential_with_jitter_and_capped(photos):
    for draw, factor in ((0.0, 1.0), (0.5, 0.75), (0.999, 0.5005)):
        waits: list[float] = []
        with FakeOpenAI(lambda body: Reply("Yes")) as server:
            server.faults = [500] * 5
            api_judge(server, backoff=1.0, max_backoff=5.0, attempts=6, sleep=waits.append, jitter=lambda: draw).yes_no(
                [YesNoQuestion(photos["astronaut"], CAT_QUESTION)])
        # 1, 2, 4, 8 -> 5 (cap), 16 -> 5, each scaled by 1 - 0.5 x draw
        assert waits == pytest.approx([factor * w for w in (1.0, 2.0, 4.0, 5.0, 5.0)])


def test_api_judge_gives_up_when_the_retry_budget_is_spent(photos):
    waits: list[float] = []
    with FakeOpenAI(lambda body: Reply("Yes")) as server:
        server.faults = [500] * 10
        [answer] = api_judge(server, backoff=1.0, attempts=100, retry_budget=7.0, sleep=waits.append).yes_no(
            [YesNoQuestion(photos["astronaut"], CAT_QUESTION)])
        assert server.count == 4  # waits 1 + 2 + 4 = 7 s fit the budget exactly; 8 s more would not
    assert waits == [1.0, 2.0, 4.0]
    assert answer.failed and answer.error == "HTTP 500 (gave up after 4 attempts: waiting 8 s more would pass the retry budget of 7 s)"
    # A Retry-After longer than the budget: no point waiting, the question fails at once.
    waits.clear()
    with FakeOpenAI(lambda body: Reply("Yes")) as server:
        server.faults = [(429, "3600")]
        [answer] = api_judge(server, retry_budget=600.0, sleep=waits.append).yes_no([YesNoQuestion(photos["astronaut"], CAT_QUESTION)])
        assert server.count == 1
    assert waits == [] and answer.error == "HTTP 429 (gave up after 1 attempts: waiting 3.6e+03 s more would pass the retry budget of 600 s)"


def test_transport_options_parse_and_stay_out_of_settings_and_identity():
    assert parse_transport_options({"timeout": "120", "attempts": "3", "retry_budget": "0", "concurrency": "8"}) == {
        "timeout": 120.0, "attempts": 3, "retry_budget": 0.0, "concurrency": 8}
    for key, value, fragment in (("timeout", "0", "> 0"), ("attempts", "0", ">= 1"), ("attempts", "2.5", "an integer"),
                                 ("concurrency", "many", "an integer"), ("retry_budget", "-1", ">= 0"), ("timeout", "nan", "a number")):
        with pytest.raises(RelbenchError, match=re.escape(f"--judge-option {key}={value}: expected")) as info:
            parse_transport_options({key: value})
        assert fragment in str(info.value)
    with pytest.raises(RelbenchError, match="--judge-option logprobs: unknown; expected one of timeout, attempts, retry_budget, concurrency"):
        parse_transport_options({"logprobs": "off"})
    plain = APIJudge("m", base_url="http://127.0.0.1:9/v1")
    tuned = APIJudge("m", base_url="http://127.0.0.1:9/v1", timeout=5, attempts=2, retry_budget=1, concurrency=9)
    assert plain.settings() == tuned.settings() and plain.identity() == tuned.identity()
    assert not {"timeout", "timeout_s", "attempts", "max_retries", "retry_budget", "concurrency"} & set(plain.settings())
    # --judge-option reaches the judge through the run context; a local judge refuses it.
    context = RunContext(device="cpu", model_overrides={"judge": "api:m"}, judge_options={"timeout": 5.0, "attempts": 2})
    judge = build_judge(context)
    assert isinstance(judge, APIJudge) and (judge.timeout, judge.attempts, judge.concurrency) == (5.0, 2, 4)
    with pytest.raises(RelbenchError, match=r"--judge-option timeout: applies to an API judge \(--model judge=api:MODEL\) only"):
        build_judge(RunContext(device="cpu", judge_options={"timeout": 5.0}))


def test_one_answer_per_question_shared_by_every_judge_metric_when_the_api_fails(demo, photos, tmp_path, monkeypatch):
    """The audit's case: relation_acc asked again after relation_vqa's answer failed, and got 100."""
    from relbench.metrics.relation_judge import api

    samples = demo_samples(demo, photos, wired=True)
    monkeypatch.setattr(api, "default_sleep", lambda seconds: None)  # no real sleeping
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with FakeOpenAI(relation_answers(), logprobs=False) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        server.faults = [500] * 4  # with 2 tries per question: the first two questions fail
        # As the runner builds them: one judge for the run context, shared by its metrics.
        context = RunContext(device="cpu", model_overrides={"judge": "api:fake-vlm"}, judge_options={"attempts": 2, "concurrency": 1})
        vqa = RelationVQAScore(context, cache_dir=tmp_path).score(samples)
        asked = server.count
        acc = RelationAccuracy(context, cache_dir=tmp_path).score(samples)
        assert server.count == asked == 4 + 12 - 2  # 12 questions, 2 of them tried twice and failed
    assert [math.isnan(r.value) for r in vqa] == [math.isnan(r.value) for r in acc] == [True, False, False, False]
    assert vqa[0].details == acc[0].details and vqa[0].details["errors"] == {
        "relation": "HTTP 500 (gave up after 2 attempts)", "astronaut": "HTTP 500 (gave up after 2 attempts)"}
    assert [r.value for r in vqa[1:]] == [r.value for r in acc[1:]] == [100.0] * 3
    assert count_failed_questions([{"relation_vqa": r.details, "relation_acc": a.details} for r, a in zip(vqa, acc)]) == {"HTTP 500": 2}


def test_count_failed_questions_and_failure_line():
    rows = [
        {"relation_vqa": {"retry": True, "errors": {"relation": "HTTP 500 (gave up after 3 attempts)", "cat": "timed out after 60 s (gave up after 3 attempts)"}},
         "relation_acc": {"retry": True, "errors": {"relation": "HTTP 500 (gave up after 3 attempts)", "cat": "timed out after 60 s (gave up after 3 attempts)"}},
         "relation_mc": {"retry": True, "errors": {"rotation_1": "unparseable: C or D"}}},
        {"relation_mc": {"errors": {"rotation_0": "HTTP 500"}}},  # no retry mark: not a failure of this kind
        {"clip_t": {}, "relation_vqa": {"retry": True, "errors": {"relation": "HTTP 400: bad request"}}},
    ]
    counts = count_failed_questions(rows)
    assert counts == {"HTTP 500": 1, "timed out": 1, "unparseable": 1, "HTTP 400": 1}
    assert failure_line(counts) == (
        "judge: 4 questions failed (HTTP 400 x1, HTTP 500 x1, timed out x1, unparseable x1); run the same command again to retry them")
    assert failure_line({"HTTP 500": 1}) == "judge: 1 question failed (HTTP 500 x1); run the same command again to retry them"
    assert failure_line({}) is None and failure_kind("request failed: ConnectionError (gave up after 2 attempts)") == "request failed: ConnectionError"


def test_evaluate_with_a_failing_api_judge_agrees_then_a_rerun_retries_only_the_failures(tmp_path, monkeypatch):
    """The issue's acceptance test: `relbench evaluate` against a server whose first 20 calls fail."""
    from typer.testing import CliRunner

    import cli
    from relbench.metrics.relation_judge import api
    from relbench.reports.html import build_report

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # a judge cache of its own
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    waits: list[float] = []
    monkeypatch.setattr(api, "default_sleep", waits.append)  # no real sleeping

    def answer(body: dict[str, Any]) -> Reply:
        question = question_of(body)
        if question.startswith("Which"):
            return Reply("A.")
        return Reply("No." if question.startswith("Does") and "hugging" not in question else "Yes")

    def request_keys(log: list[Any]) -> list[tuple[str, str]]:  # (question, image): one judge question
        return [(question_of(e.body), image_url_of(e.body)) for e in log]

    out = tmp_path / "run"
    args = ["evaluate", "-o", str(out), "--method", "reference-collage", "--benchmark", "demo", "--profile", "tiny",
            "--metrics", "relation_vqa,relation_acc,relation_mc", "--model", "judge=api:fake-vlm", "--device", "cpu", "--quiet"]
    with FakeOpenAI(answer, logprobs=False) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        server.faults = [500] * 20
        first = CliRunner().invoke(cli.app, [*args, "--judge-option", "attempts=3", "--judge-option", "concurrency=1"])
        assert first.exit_code == 0, (first.output, first.exception)
        first_log = list(server.log)
        rows_1 = {row["case_id"]: row["metrics"] for row in read_rows(out / "samples.jsonl")}
        page_1 = build_report(out, tmp_path / "report-1").page.read_text()
        # The same command again (other transport settings: they are not part of the run's identity).
        second = CliRunner().invoke(cli.app, [*args, "--judge-option", "attempts=5", "--judge-option", "timeout=30"])
        assert second.exit_code == 0, (second.output, second.exception)
        second_log = server.log[len(first_log):]
    rows_2 = {row["case_id"]: row["metrics"] for row in read_rows(out / "samples.jsonl")}

    # Run 1: 20 failed calls = 6 questions tried 3 times + 2 failed tries of a 7th that then succeeded.
    answered = {key for key, entry in zip(request_keys(first_log), first_log) if entry.status == 200}
    failed = set(request_keys(first_log)) - answered
    assert len(failed) == 6 and sum(e.status == 500 for e in first_log) == 20
    # Two waits per failed question, two for the 7th: 1 s then 2 s, each with jitter; never real.
    assert len(waits) == 14 and all(0.5 <= w <= 1.0 for w in waits[::2]) and all(1.0 <= w <= 2.0 for w in waits[1::2])
    assert "judge: 6 questions failed (HTTP 500 x6); run the same command again to retry them" in first.output
    assert "failed: 2 of 4 items have a score that failed; run the same command again to retry them" in first.output
    assert "judge: 6 questions failed" in page_1
    nan_rows = set()
    for case_id, metrics in rows_1.items():
        vqa, acc = metrics["relation_vqa"], metrics["relation_acc"]
        if vqa["value"] is None or math.isnan(vqa["value"]):
            nan_rows.add(case_id)
            assert acc["value"] is None or math.isnan(acc["value"])
            assert vqa["details"]["retry"] is True and acc["details"]["errors"] == vqa["details"]["errors"]
            assert vqa["details"]["reason"].startswith("judge answer failed: relation: HTTP 500 (gave up after 3 attempts)")
        else:
            assert acc["value"] == (100.0 if vqa["value"] >= 50 else 0.0)
    assert len(nan_rows) == 2  # 12 yes/no questions, 3 per row, asked in row order: rows 1-2 hold the 6 failures

    # Run 2: exactly the failed questions were asked again (once each: the server answers now),
    # nothing else; every row now has a number for every metric, and they agree.
    assert sorted(request_keys(second_log)) == sorted(failed)
    assert "judge:" not in second.output and "failed:" not in second.output and "2 stored images scored" in second.output
    for case_id, metrics in rows_2.items():
        vqa, acc, mc = (metrics[name]["value"] for name in ("relation_vqa", "relation_acc", "relation_mc"))
        assert vqa in (0.0, 100.0) and acc == (100.0 if vqa >= 50 else 0.0) and mc in (0.0, 100.0)
        assert vqa == (100.0 if case_id == "astronaut-hug-cat" else 0.0)
        assert "retry" not in metrics["relation_vqa"]["details"]
        if case_id not in nan_rows:
            assert metrics == rows_1[case_id]  # untouched
    assert all(rows_2[c]["relation_vqa"]["settings"] == rows_2[d]["relation_vqa"]["settings"] for c in rows_2 for d in rows_2)
    assert "judge-failures" not in build_report(out, tmp_path / "report-2").page.read_text()


# ------------------------------------------------------------------------------------------
# Wiring (active once the metrics are registered in relbench.metrics)

JUDGE_METRICS = {"relation_vqa": RelationVQAScore, "relation_acc": RelationAccuracy, "relation_mc": RelationMultipleChoice}


@pytest.mark.skipif(not set(JUDGE_METRICS) <= set(__import__("relbench.metrics").metrics.METRICS.names()),
                    reason="relation judge metrics not registered in relbench.metrics yet")
def test_registered_judge_metrics_run_through_the_runner(tmp_path):
    from relbench.metrics import METRICS
    from relbench.reports.tables import load_run
    from relbench.runner import EvaluateOptions, evaluate

    for name, cls in JUDGE_METRICS.items():
        entry = METRICS.entry(name)
        assert METRICS.get(name) is cls and entry.summary == cls.description
        assert entry.meta["higher_is_better"] is True and tuple(entry.meta["range"]) == (0.0, 100.0)
        assert entry.meta["model"] == "judge" and tuple(entry.meta["profiles"]) == ("tiny", "full")
    out = tmp_path / "run"
    evaluate(EvaluateOptions(benchmark="demo", output=out, methods=["reference-collage"], metrics=list(JUDGE_METRICS),
                             device="cpu", progress=False))
    rows = read_rows(out / "samples.jsonl")  # settings resolved from run.json
    assert len(rows) == 4
    for row in rows:
        vqa, acc, mc = (row["metrics"][name] for name in JUDGE_METRICS)
        assert 0.0 < vqa["value"] < 100.0 and acc["value"] in (0.0, 100.0) and mc["value"] in (0.0, 100.0)
        assert vqa["details"]["p_yes_normalized"] == pytest.approx(vqa["value"] / 100)
        assert mc["details"]["n_options"] >= 2 and row["relation"] in mc["details"]["options"]
        assert vqa["settings"]["judge_id"] == "tiny:judge" and vqa["settings"]["template_version"] == templates.TEMPLATE_VERSION
    _, table = load_run(out)
    assert table["relation_vqa"].notna().all()
