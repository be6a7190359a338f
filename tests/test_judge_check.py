"""`relbench judge check`: judge sets (builder labels by construction, file format), the statistics
against scikit-learn, always-yes / always-no / always-A judges (in process and through the loopback
OpenAI-compatible server), two judges' kappa, the tiny profile end to end and the report's section."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, roc_auc_score

from fake_openai import FakeOpenAI, Reply, question_of
from relbench.errors import RelbenchError, SpecError
from relbench.metrics.functional import judge_check as jc
from relbench.metrics.relation_judge import ChoiceAnswer, ChoiceQuestion, Judge, YesNoAnswer, YesNoQuestion, templates
from relbench.metrics.relation_judge.check import (
    agreement,
    ask_set,
    check_answers,
    find_checks,
    judge_identity,
    run_judge_check,
)
from relbench.metrics.relation_judge.judge_set import (
    COLLAGE_BOXES,
    build_triplet_set,
    item_image,
    load_judge_set,
    parse_judge_set,
    set_data,
    write_judge_set,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Judges with known answers


class FixedJudge(Judge):
    """P(yes) from ``p_yes(question)`` (None: an unparseable answer); multiple choice always option ``letter``."""

    def __init__(self, p_yes: Any = 1.0, letter: Any = 0, name: str = "fixed"):
        self.p_yes = p_yes if callable(p_yes) else (lambda question, value=p_yes: value)
        self.letter = letter if callable(letter) else (lambda question, value=letter: value)
        self.judge_id = name

    def identity(self) -> str | None:
        return None

    def settings(self) -> dict[str, Any]:
        return {"judge": "test", "judge_id": self.judge_id, "revision": None, "dtype": None}

    def yes_no(self, questions: Sequence[YesNoQuestion]) -> list[YesNoAnswer]:
        out = []
        for q in questions:
            p = self.p_yes(q)
            out.append(YesNoAnswer(p, 1 - p, p, source="test") if p is not None else
                       YesNoAnswer(None, None, None, source="test", error="unparseable: maybe"))
        return out

    def choice(self, questions: Sequence[ChoiceQuestion]) -> list[ChoiceAnswer]:
        return [ChoiceAnswer(self.letter(q), None, source="test") for q in questions]


def small_set_data() -> dict[str, Any]:
    """A user set of bundled photos: 5 yes and 4 no questions, one choice question (2 options)."""
    return {
        "judge_set": 1,
        "name": "photos",
        "label_source": "human",
        "relations": {"hug": "hugging", "ride": "riding"},
        "items": [
            {"id": "astronaut", "image": "skimage:astronaut", "subjects": ["astronaut", "cat"], "questions": [
                {"ask": "relation", "relation": "hug", "label": "no", "group": "other_relation"},
                {"ask": "relation", "relation": "ride", "label": "no"},
                {"ask": "presence", "subject": "astronaut", "label": "yes"},
                {"ask": "presence", "subject": "cat", "label": False, "group": "absent_class"},
                {"ask": "choice", "relation": "hug", "options": ["ride", "hug"]},
            ]},
            {"id": "cat", "image": "skimage:chelsea", "subjects": ["cat"], "label_source": "construction", "questions": [
                {"ask": "presence", "subject": "cat", "label": True},
                {"ask": "presence", "subject": "rocket", "label": "no"},
            ]},
            {"id": "collage", "collage": {"images": ["skimage:astronaut", "skimage:chelsea"], "size": 64},
             "subjects": ["astronaut", "cat"], "questions": [
                {"ask": "relation", "relation": "hug", "label": "no", "group": "collage"},
                {"ask": "presence", "subject": "astronaut", "label": "yes"},
                {"ask": "presence", "subject": "cat", "label": "yes", "label_source": "annotator-2"},
            ]},
        ],
    }


@pytest.fixture
def small_set(tmp_path):
    path = tmp_path / "set.yaml"
    path.write_text(yaml.safe_dump(small_set_data()))
    return load_judge_set(path)


# --------------------------------------------------------------------------------------------
# The set builder and the file format


def test_triplet_set_labels_are_right_by_construction(shared_data):
    judge_set = build_triplet_set(shared_data)
    assert judge_set.relations == {"hug": "hugging", "shake": "shaking hands with"}
    assert judge_set.counts() == {"items": 20, "yes_no": 90, "yes": 50, "no": 40, "choice": 10}
    prompts = {rel: json.loads((shared_data / "dreamrelation" / rel / "prompts.json").read_text()) for rel in ("hug", "shake")}
    all_entities = {e for rel in prompts.values() for entry in rel.values() for e in entry["entities"]}
    for item in judge_set.items:
        relation, index, kind = item.id.split("-")
        entities = prompts[relation][index]["entities"]
        assert list(item.subjects) == entities
        words = {w for e in entities for w in e.split()}
        for q in item.questions:
            if q.ask == "relation":
                # yes only for a motion image asked about its own relation
                assert q.label is (kind == "motion" and q.relation == relation)
                assert q.group == ("positive" if q.label else "other_relation" if kind == "motion" else "collage")
            elif q.ask == "presence":
                assert q.subject in all_entities
                assert q.label is (q.subject in entities)
                if not q.label:  # absent classes share no word with the image's subjects ("bear" / "polar bear")
                    assert not set(q.subject.split()) & words
            else:
                assert kind == "motion" and q.relation == relation and sorted(q.options) == ["hug", "shake"]
            assert q.label_source == "construction"
        if kind == "motion":
            assert item.image == f"dreamrelation/{relation}/videos/{index}/motion.png"
            assert sum(q.ask == "presence" and q.label is False for q in item.questions) == 2
        else:
            assert item.collage.images == (f"dreamrelation/{relation}/videos/{index}/concept0.png",
                                           f"dreamrelation/{relation}/videos/{index}/concept1.png")
    hug0 = judge_set.items[0]
    assert [judge_set.question_text(hug0, q) for q in hug0.questions[:2]] == [
        "Does this image show a lion hugging a polar bear? Answer yes or no.",
        "Does this image show a lion shaking hands with a polar bear? Answer yes or no.",
    ]
    # The bear/tiger image is never asked whether there is a polar bear (and vice versa).
    bear = next(i for i in judge_set.items if i.id == "hug-2-motion")
    assert "polar bear" not in {q.subject for q in bear.questions}
    # Seeded: the same set twice.
    assert build_triplet_set(shared_data).digest == judge_set.digest


def test_collage_item_is_the_reference_collage_of_its_concepts(shared_data):
    from PIL import Image

    judge_set = build_triplet_set(shared_data)
    item = judge_set.items[1]
    image = item_image(judge_set, item, shared_data)
    assert image.size == (512, 512) and item.collage.boxes == COLLAGE_BOXES
    pixels = np.asarray(image)
    assert (pixels[5, 5] == 127).all() and (pixels[-5, -5] == 127).all()  # grey outside the boxes
    concept = Image.open(shared_data / item.collage.images[0]).convert("RGB")  # 512x512, "contain" in a 282x333 box
    inside = np.asarray(concept.resize((282, 282), Image.Resampling.BICUBIC))
    top = round(0.2 * 512) + (round(0.85 * 512) - round(0.2 * 512) - 282) // 2
    assert np.array_equal(pixels[top:top + 282, 0:282], inside)


def test_set_file_round_trip_and_user_extension(small_set, tmp_path):
    assert small_set.counts() == {"items": 3, "yes_no": 9, "yes": 4, "no": 5, "choice": 1}
    sources = [q.label_source for item in small_set.items for q in item.questions]
    assert sources == ["human"] * 5 + ["construction"] * 2 + ["human", "human", "annotator-2"]
    for name in ("again.yaml", "again.json"):
        again = load_judge_set(write_judge_set(small_set, tmp_path / name))
        assert again.digest == small_set.digest and set_data(again) == set_data(small_set)
    # a user's own image next to the set file
    from PIL import Image

    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "mine.png")
    data = small_set_data()
    data["items"].append({"id": "mine", "image": "./mine.png", "subjects": ["frog"],
                          "questions": [{"ask": "presence", "subject": "frog", "label": "yes"}]})
    (tmp_path / "extended.yaml").write_text(yaml.safe_dump(data))
    extended = load_judge_set(tmp_path / "extended.yaml")
    assert extended.digest != small_set.digest
    assert item_image(extended, extended.items[-1], tmp_path / "no-data-root").getpixel((0, 0)) == (10, 200, 30)


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d["items"][0]["questions"][0].update(label="maybe"), "items[astronaut].questions[0].label: expected yes or no"),
    (lambda d: d["items"][0]["questions"][0].update(relation="kick"), "items[astronaut].questions[0].relation: expected a relation id"),
    (lambda d: d["items"][0].update(collage={"images": ["a.png", "b.png"]}), "items[astronaut]: expected exactly one of image"),
    (lambda d: d["items"][1].update(id="astronaut"), "duplicate item id 'astronaut'"),
    (lambda d: d["items"][0]["questions"][4].update(options=["ride", "ride"]), "options: expected at least 2 different"),
    (lambda d: d["items"][0]["questions"][4].update(label="yes"), "a choice question takes no label"),
    (lambda d: d.update(judge_set=2), "judge_set: expected 1"),
    (lambda d: d["items"][2]["collage"].update(size=10), "collage.size: expected an integer from 64 to 2048"),
])
def test_set_file_problems_name_the_file_and_field(change, fragment):
    data = small_set_data()
    change(data)
    judge_set, problems = parse_judge_set(data, "set.yaml")
    assert judge_set is None
    assert any(str(p).startswith("set.yaml: ") and fragment in str(p) for p in problems), [str(p) for p in problems]


def test_missing_triplets_and_set_files_are_one_line(tmp_path):
    with pytest.raises(RelbenchError, match=r"no DreamRelation relation folder .*relbench data download"):
        build_triplet_set(tmp_path)
    with pytest.raises(RelbenchError, match="nope.yaml: judge set file not found"):
        load_judge_set(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------------------------
# Statistics against scikit-learn


def random_case(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    # Rounded to 0.05: many ties and values on bin edges (0.3, 0.5, 1.0, ...).
    p = np.clip(np.round((0.35 * labels + 0.65 * rng.random(n)) * 20) / 20, 0, 1)
    return labels, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_equal_sklearn(seed):
    labels, p = random_case(seed)
    answers = p > 0.5
    assert jc.accuracy(labels, answers) == pytest.approx(accuracy_score(labels, answers), abs=1e-12)
    assert jc.balanced_accuracy(labels, answers) == pytest.approx(balanced_accuracy_score(labels, answers), abs=1e-12)
    assert jc.auroc(labels, p) == pytest.approx(roc_auc_score(labels, p), abs=1e-12)
    other = np.random.default_rng(seed + 10).random(labels.size) < 0.5
    assert jc.cohen_kappa(answers, other) == pytest.approx(cohen_kappa_score(answers, other), abs=1e-12)
    bins = jc.reliability_bins(labels, p, 10)
    prob_true, prob_pred = calibration_curve(labels, p, n_bins=10, strategy="uniform")
    filled = [b for b in bins if b.n]
    np.testing.assert_allclose([b.yes_rate for b in filled], prob_true, atol=1e-12)
    np.testing.assert_allclose([b.mean_p_yes for b in filled], prob_pred, atol=1e-12)
    assert sum(b.n for b in bins) == labels.size
    # ECE from sklearn's bins weighted by the counts numpy's histogram gives for the same edges
    # (right-closed, as calibration_curve bins; computed here with np.digitize).
    counts = np.bincount(np.clip(np.digitize(p, np.linspace(0, 1, 11)[1:-1], right=True), 0, 9), minlength=10)
    expected = sum(c / labels.size * abs(t - q) for c, t, q in zip(counts[counts > 0], prob_true, prob_pred))
    assert jc.expected_calibration_error(bins) == pytest.approx(expected, abs=1e-12)


def test_statistics_hand_computed_and_edges():
    # bins: right-closed, 0 in the first, 0.3 (3.0000000000000004 x 0.1) in (0.2, 0.3]
    assert list(jc.bin_index([0.0, 0.1, 0.1000001, 0.3, 0.5, 0.5000001, 1.0], 10)) == [0, 0, 1, 2, 4, 5, 9]
    bins = jc.reliability_bins([True, False, True, True], [0.9, 0.9, 0.2, 0.0], 2)
    assert [(b.n, b.mean_p_yes, b.yes_rate) for b in bins] == [(2, 0.1, 1.0), (2, 0.9, 0.5)]
    assert jc.expected_calibration_error(bins) == pytest.approx(0.5 * 0.9 + 0.5 * 0.4)
    assert jc.auroc([True, False, True], [0.8, 0.8, 0.3]) == pytest.approx(0.25)  # one tie, one loss
    assert jc.confusion([True, True, False, False], [True, False, False, True]) == jc.Confusion(tp=1, fn=1, tn=1, fp=1)
    # undefined is NaN
    assert math.isnan(jc.balanced_accuracy([True, True], [True, False]))
    assert math.isnan(jc.auroc([False, False], [0.1, 0.9]))
    assert math.isnan(jc.cohen_kappa([True, True], [True, True]))
    assert math.isnan(jc.accuracy([], []))
    assert math.isnan(jc.expected_calibration_error(jc.reliability_bins([], [], 10)))
    with pytest.raises(ValueError, match="probabilities in"):
        jc.auroc([True], [1.5])


# --------------------------------------------------------------------------------------------
# Degenerate judges


def run_check(judge: Judge, judge_set, **kwargs: Any):
    answers = ask_set(judge, judge_set, Path("/nonexistent-data-root"))
    return check_answers(answers, judge.settings(), judge_set, n_bins=10, profile="tiny", created="now", **kwargs)


@pytest.mark.parametrize("p, said", [(1.0, "yes"), (0.0, "no")])
def test_always_yes_and_always_no_judges(small_set, p, said):
    check = run_check(FixedJudge(p), small_set)
    overall = check.scopes["all"]
    assert overall["balanced_accuracy"] == 0.5
    assert overall["auroc"] == 0.5  # every P(yes) tied
    assert overall["accuracy"] == pytest.approx((4 if said == "yes" else 5) / 9)
    assert overall["yes_answer_rate"] == (1.0 if said == "yes" else 0.0)
    assert any(f"answered {said} to every question: balanced accuracy 0.5" in note for note in check.notes)
    assert any("AUROC is 0.5 by ties" in note for note in check.notes)
    # a scope with one label only: balanced accuracy and AUROC undefined, not 0.5
    assert math.isnan(check.scopes["relation"]["balanced_accuracy"]) and math.isnan(check.scopes["relation"]["auroc"])
    # calibration: every answer in the last (or first) bin
    bins = overall["bins"]
    assert bins[9 if said == "yes" else 0]["n"] == 9
    assert overall["ece"] == pytest.approx(abs(4 / 9 - p))


def test_always_a_judge_has_full_position_bias_and_zero_circular_accuracy(small_set):
    check = run_check(FixedJudge(0.7, letter=0), small_set)
    choice = check.choice["all"]
    assert choice["position_bias"] == {"A": 100.0, "B": 0.0}
    assert choice["circular_accuracy"] == 0.0  # right in exactly one of the two rotations
    assert choice["rotation_accuracy"] == 0.5
    assert any("chose A in every answered rotation" in note for note in check.notes)
    [answer] = [a for a in check.answers if a.ask == "choice"]
    assert answer.expected_letters == ["B", "A"] and answer.chosen_letters == ["A", "A"]


def test_a_perfect_judge_scores_one(small_set):
    # keyed by image size and text: "Is there a cat" is asked of the astronaut (no) and of the cat (yes)
    sizes = {"astronaut": (512, 512), "cat": (451, 300), "collage": (64, 64)}
    labels = {(sizes[item.id], small_set.question_text(item, q)): q.label
              for item in small_set.items for q in item.questions if q.ask != "choice"}
    def hugging(question: ChoiceQuestion) -> int:  # the true relation of the one choice question
        options = question.text.split("\n")[1:-1]
        return next(i for i, line in enumerate(options) if " hugging " in line)

    check = run_check(FixedJudge(lambda q: 0.9 if labels[q.image.size, q.text] else 0.2, letter=hugging), small_set)
    for name in ("accuracy", "balanced_accuracy", "auroc"):
        assert check.scopes["all"][name] == 1.0
    assert check.scopes["all"]["ece"] == pytest.approx((4 * 0.1 + 5 * 0.2) / 9)
    assert check.choice["all"]["circular_accuracy"] == 1.0
    assert check.choice["all"]["position_bias"] == {"A": 50.0, "B": 50.0}
    assert check.notes == []


def test_unparseable_answers_are_counted_and_left_out(small_set):
    check = run_check(FixedJudge(lambda q: None if q.text.startswith(("Is", "Are")) else 0.9), small_set)
    presence, overall = check.scopes["presence"], check.scopes["all"]
    assert presence["unparseable_fraction"] == 1.0 and math.isnan(presence["accuracy"])
    assert overall["unparseable_fraction"] == pytest.approx(6 / 9) and overall["n_answered"] == 3
    assert overall["accuracy"] == 0.0  # the three relation questions are all "no"
    assert any("6 yes/no answers failed (unparseable x6)" in note for note in check.notes)


def test_two_judges_kappa_equals_sklearn(small_set):
    sizes = {"astronaut": (512, 512), "cat": (451, 300), "collage": (64, 64)}
    keys = [(sizes[item.id], small_set.question_text(item, q)) for item in small_set.items for q in item.questions if q.ask != "choice"]
    a_yes = {keys[i] for i in (0, 2, 3, 5, 7)}
    b_yes = {keys[i] for i in (0, 2, 4, 5, 8)}
    a = run_check(FixedJudge(lambda q: 0.8 if (q.image.size, q.text) in a_yes else 0.3, name="a"), small_set)
    b = run_check(FixedJudge(lambda q: 0.8 if (q.image.size, q.text) in b_yes else 0.3, name="b"), small_set)
    kappa = agreement(a, b)
    expected = cohen_kappa_score([k in a_yes for k in keys], [k in b_yes for k in keys])
    assert kappa["all"]["cohen_kappa"] == pytest.approx(expected, abs=1e-12)
    # by hand: they differ on questions 3, 4, 7, 8; p_o = 5/9, p_e = (5/9)^2 + (4/9)^2 = 41/81
    assert kappa["all"]["n_both_answered"] == 9 and kappa["all"]["agreement"] == pytest.approx(5 / 9)
    assert kappa["all"]["cohen_kappa"] == pytest.approx((45 / 81 - 41 / 81) / (1 - 41 / 81))


# --------------------------------------------------------------------------------------------
# The loopback API server, the tiny profile, the command and the report


def test_api_server_always_yes_through_the_command(small_set, tmp_path):
    """`relbench judge check --model judge=api:...` against a server that says yes to everything."""
    set_file = write_judge_set(small_set, tmp_path / "set.yaml")
    with FakeOpenAI(lambda body: Reply("A" if "Which option" in question_of(body) else "Yes"), logprobs=False) as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "test-key", "OMP_NUM_THREADS": "1",
               "HF_HUB_OFFLINE": "1"}
        result = subprocess.run(
            [sys.executable, "-c", "import cli; cli.main()", "judge", "check", "--model", "judge=api:fake-vlm",
             "--set", str(set_file), "-o", str(tmp_path / "out"), "--no-cache"],
            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        assert server.count == 9 + 2  # every yes/no question, both rotations
    assert re.search(r"all\s+9\s+0\.444\s+0\.500\s+0\.500", result.stdout), result.stdout
    assert "answered yes to every question: balanced accuracy 0.5" in result.stdout
    assert "AUROC is 0.5 by ties" in result.stdout
    document = json.loads((tmp_path / "out" / "check.json").read_text())
    [record] = document["judges"]
    assert record["identity"] == {"judge": "api", "judge_id": "api:fake-vlm", "base_url": server.url, "logprobs": "auto",
                                  "template_version": templates.TEMPLATE_VERSION}
    assert record["scopes"]["all"]["balanced_accuracy"] == 0.5 and record["scopes"]["relation"]["auroc"] is None
    assert record["choice"]["all"]["position_bias"] == {"A": 100.0, "B": 0.0}
    assert record["set"]["digest"] == small_set.digest
    for name in ("summary.csv", "reliability.csv", "choice.csv", "answers.csv"):
        assert (tmp_path / "out" / name).is_file()


def test_bad_model_option_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "judge", "check", "--model", "clip=x"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: --model 'clip=x': expected judge=")


def test_tiny_profile_two_judges_and_the_report_section(small_set, tmp_path, monkeypatch):
    monkeypatch.setenv("RELBENCH_JUDGE_CHECKS", str(tmp_path / "store"))
    lines: list[str] = []
    result = run_judge_check(["tiny:judge", "tiny:judge"], small_set, tmp_path, tmp_path / "out", device="cpu",
                             use_cache=False, echo=lines.append)
    first, second = result.checks
    assert first.identity == {"judge": "local", "judge_id": "tiny:judge", "dtype": "float32", "seed": 0,
                              "template_version": templates.TEMPLATE_VERSION}
    assert first.scopes["all"]["n"] == 9 and first.choice["all"]["n"] == 1
    # the same model twice answers the same: full agreement (kappa 1, or undefined if it never varied)
    assert result.kappa["all"]["agreement"] == 1.0
    assert (tmp_path / "out" / "agreement.csv").is_file()
    assert any(line.startswith("agreement of the two judges on 9 yes/no questions") for line in lines)

    # The relation metrics of a tiny run name the same judge: the report finds the check.
    from relbench.metrics.relation_judge.metric import RelationVQAScore
    from relbench.profiles import RunContext
    from relbench.reports.judge_check import judge_check_section

    metric = RelationVQAScore(RunContext(device="cpu"), use_cache=False)
    settings = metric.settings()
    assert judge_identity(settings) == first.identity
    [found] = find_checks(settings)
    assert found["set"]["name"] == "photos" and found["scopes"]["all"]["n"] == 9
    html = judge_check_section({"relation_vqa": {"settings": settings}, "clip_t": {"settings": {"model": "x"}}})
    assert 'id="judge-check"' in html and "judging relation_vqa" in html and "<b>photos</b>" in html
    assert "<td>relation:hug</td>" in html
    # another judge revision or template version: no check on file
    other = judge_check_section({"relation_vqa": {"settings": {**settings, "template_version": "relbench-judge-v0"}}})
    assert "No check of judge" in other and "<table>" not in other
    assert judge_check_section({"clip_t": {"settings": {"model": "x"}}}) == ""


def test_a_set_file_with_problems_lists_them_all(tmp_path):
    data = small_set_data()
    data["items"][0]["questions"][0]["label"] = "maybe"
    data["items"][1]["questions"][0]["ask"] = "count"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as caught:
        load_judge_set(tmp_path / "bad.yaml")
    assert len(caught.value.problems) == 2 and str(caught.value).startswith(f"{tmp_path / 'bad.yaml'}: items[astronaut]")


def test_default_set_on_the_tiny_profile_through_the_command(shared_data, tmp_path, monkeypatch):
    """No --set: the set is built from the triplets under --data-root; the tiny judge answers it."""
    from typer.testing import CliRunner

    import cli

    monkeypatch.setenv("RELBENCH_JUDGE_CHECKS", str(tmp_path / "store"))
    result = CliRunner().invoke(cli.app, ["judge", "check", "--data-root", str(shared_data), "-o", str(tmp_path / "out"),
                                          "--device", "cpu", "--bins", "5"])
    assert result.exit_code == 0, result.output
    assert "on dreamrelation-triplets (20 images, 90 yes/no, 10 choice)" in result.output
    assert "tiny profile: a random tiny judge, so these numbers only show that the check runs" in result.output
    [record] = json.loads((tmp_path / "out" / "check.json").read_text())["judges"]
    assert record["identity"]["judge_id"] == "tiny:judge" and record["profile"] == "tiny"
    assert {"all", "relation", "presence", "relation:hug", "relation:shake", "group:collage"} <= set(record["scopes"])
    assert len(record["scopes"]["all"]["bins"]) == 5 and sum(b["n"] for b in record["scopes"]["all"]["bins"]) == 90
    assert record["choice"]["all"]["n"] == 10 and record["choice"]["all"]["n_rotations"] == 20
    assert len(list((tmp_path / "store").glob("*/*.json"))) == 1
