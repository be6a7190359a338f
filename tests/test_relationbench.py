"""The built-in RelationBench spec: generator and committed YAML agree, structure, layouts, files."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from relbench.benchmark import Benchmark, Box, RelationKind
from relbench.benchmarks import builtin_spec_path, load_benchmark
from relbench.spec import check_files

REPO = Path(__file__).resolve().parents[1]
SPEC_DIR = REPO / "benchmark_data" / "relationbench"
SHARED_DATA = REPO.parent / "shared" / "data"
MAX_USES = 12  # no subject in more cases than this
MIN_USES = 3  # every subject shows up in a few cases


def _load_build() -> ModuleType:
    # build.py is a script beside the spec, not an importable package module.
    spec = importlib.util.spec_from_file_location("relationbench_build", SPEC_DIR / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


build = _load_build()


@pytest.fixture(scope="module")
def bench() -> Benchmark:
    return load_benchmark("relationbench")


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _inside(inner: Box, outer: Box) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _centre(box: Box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


# --- generator and committed file --------------------------------------------------------------


def test_committed_yaml_is_the_generator_output() -> None:
    committed = (SPEC_DIR / "benchmark.yaml").read_text(encoding="utf-8")
    assert committed == build.render_yaml(build.build_spec()), (
        "benchmark.yaml and build.py disagree: run python benchmark_data/relationbench/build.py"
    )
    assert builtin_spec_path("relationbench").resolve() == (SPEC_DIR / "benchmark.yaml").resolve()


def test_yaml_reads_back_as_the_generated_data() -> None:
    # Guards the hand-written YAML emitter: quoting, floats, the folded description.
    committed = yaml.safe_load((SPEC_DIR / "benchmark.yaml").read_text(encoding="utf-8"))
    assert committed == build.build_spec()
    assert committed["version"] == "1" and committed["name"] == "relationbench"


def test_generator_is_seeded_and_independent_of_hash_seed() -> None:
    other = build.build_spec(seed=build.SEED + 1)
    assert [c["id"] for c in other["cases"]] != [c["id"] for c in build.build_spec()["cases"]]
    for hash_seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, str(SPEC_DIR / "build.py"), "--check"], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr


def test_noun_phrase_articles() -> None:
    assert build.noun_phrase("dog") == "a dog"
    assert build.noun_phrase("astronaut") == "an astronaut"
    assert build.noun_phrase("glasses") == "glasses"
    assert build.noun_phrase("stuffed animal") == "a stuffed animal"


def test_yaml_scalar_quoting() -> None:
    assert build._scalar("on top of") == "on top of"
    assert build._scalar("on") == '"on"'  # YAML 1.1 would read a bare on as true
    assert build._scalar('say "hi": now') == '"say \\"hi\\": now"'
    assert yaml.safe_load("v: " + build._scalar('say "hi": now'))["v"] == 'say "hi": now'


# --- structure ----------------------------------------------------------------------------------


def test_counts(bench: Benchmark) -> None:
    assert (bench.name, bench.version) == ("relationbench", "1")
    assert len(bench.subjects) == 30
    assert sum(len(s.images) for s in bench.subjects.values()) == 158
    assert len(bench.relations) >= 10
    assert len(bench.cases) >= 100
    assert {r.kind for r in bench.relations.values()} == set(RelationKind)
    for sid, subject in bench.subjects.items():
        assert subject.images == tuple(f"dreambench/{sid}/{i:02d}.jpg" for i in range(len(subject.images)))


def test_cases_fit_their_relation_and_are_unique(bench: Benchmark) -> None:
    seen = set()
    for case in bench.cases:
        relation = bench.relations[case.relation]
        assert case.id == f"{case.relation}-{case.subjects[0]}-{case.subjects[1]}"
        for sid, role in zip(case.subjects, relation.fits, strict=True):
            assert bench.subjects[sid].category in role, case.id
        key = (case.relation, frozenset(case.subjects))
        assert key not in seen, f"duplicate relation and pair: {case.id}"
        seen.add(key)


def test_every_relation_has_enough_cases(bench: Benchmark) -> None:
    per_relation = Counter(case.relation for case in bench.cases)
    assert set(per_relation) == set(bench.relations)
    assert min(per_relation.values()) >= 5


def test_subjects_are_spread(bench: Benchmark) -> None:
    uses = Counter(sid for case in bench.cases for sid in case.subjects)
    assert set(uses) == set(bench.subjects), "every subject is in some case"
    assert max(uses.values()) <= MAX_USES, uses.most_common(3)
    assert min(uses.values()) >= MIN_USES, uses.most_common()[-3:]
    pairs = Counter(frozenset(case.subjects) for case in bench.cases)
    assert max(pairs.values()) <= 2, pairs.most_common(3)


def test_prompts_name_both_subjects_with_articles(bench: Benchmark) -> None:
    for case in bench.cases:
        first, second = (bench.subjects[sid].class_noun for sid in case.subjects)
        assert first != second, f"{case.id}: both subjects are called {first!r}"
        phrase = bench.relations[case.relation].phrase
        assert case.prompt == f"{build.noun_phrase(first)} {phrase} {build.noun_phrase(second)}"
        assert not re.search(r"\ba [aeiou]", case.prompt), case.prompt
    assert "a dog wearing glasses" in {c.prompt for c in bench.cases}


# Layout expectations per relation: (role 0 box, role 1 box) -> passes.
LAYOUT_CHECKS = {
    "interaction": lambda a, b: _overlap(a, b) == 0 and abs(_centre(a)[0] - _centre(b)[0]) > 0.3,
    "next_to": lambda a, b: _overlap(a, b) == 0 and abs(_centre(a)[0] - _centre(b)[0]) > 0.3,
    "chase": lambda a, b: _overlap(a, b) == 0 and abs(_centre(a)[0] - _centre(b)[0]) > 0.3,
    "carry": lambda a, b: _overlap(a, b) > 0 and _area(a) > _area(b),
    "push": lambda a, b: _overlap(a, b) > 0 and _centre(a)[0] != _centre(b)[0],
    "ride": lambda a, b: _overlap(a, b) > 0 and _centre(a)[1] < _centre(b)[1],
    "wear": lambda a, b: _inside(b, a),
    "on_top_of": lambda a, b: _centre(a)[1] < _centre(b)[1] and a[3] <= b[1] + 0.1,
    "behind": lambda a, b: _overlap(a, b) > 0 and a[1] < b[1],
    "peek_out_of": lambda a, b: _overlap(a, b) > 0 and a[1] < b[1] and a[3] > b[1],
}


def _area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def test_layout_boxes_suit_the_relation(bench: Benchmark) -> None:
    mirrored = 0
    for case in bench.cases:
        assert len(case.boxes) == 2
        for box in case.boxes:
            assert 0.0 <= box[0] < box[2] <= 1.0 and 0.0 <= box[1] < box[3] <= 1.0, case.id
            assert _area(box) >= 0.04, f"{case.id}: box too small to hold a subject"
        relation = bench.relations[case.relation]
        check = LAYOUT_CHECKS["interaction" if relation.kind is RelationKind.INTERACTION else relation.id]
        assert check(*case.boxes), f"{case.id}: boxes {case.boxes} do not suit {relation.id}"
        mirrored += _centre(case.boxes[0])[0] > _centre(case.boxes[1])[0]
    assert 0.25 * len(bench.cases) < mirrored < 0.75 * len(bench.cases), "role 0 should be left and right"
    hug = next(c for c in bench.cases if c.relation == "hug" and c.boxes[0][0] == 0.0)
    assert hug.boxes == build.DEFAULT_TWO_BOXES


def test_wear_puts_glasses_on_the_head(bench: Benchmark) -> None:
    for case in bench.cases:
        if case.relation == "wear" and case.subjects[1] == "pink_sunglasses":
            wearer, glasses = case.boxes
            assert glasses[3] < _centre(wearer)[1], case.id


def test_reference_poses_point_at_dreamrelation_triplets(bench: Benchmark) -> None:
    for rid, folder in (("hug", "hug"), ("shake_hands", "shake")):
        poses = bench.relations[rid].reference_poses
        assert len(poses) == 5
        for i, pose in enumerate(poses):
            assert pose.keypoints == f"dreamrelation/{folder}/videos/{i}/motion_keyposes.pth"
            assert pose.skeleton == "ap10k"
            assert pose.image == f"dreamrelation/{folder}/videos/{i}/motion.png"
            assert pose.masks == (
                f"dreamrelation/{folder}/masks/{i}/motion0.png",
                f"dreamrelation/{folder}/masks/{i}/motion1.png",
            )
    others = [r.id for r in bench.relations.values() if r.reference_poses and r.id not in ("hug", "shake_hands")]
    assert others == []


# --- against the shared data ----------------------------------------------------------------------

needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "dreambench").is_dir() or not (SHARED_DATA / "dreamrelation").is_dir(),
    reason=f"shared data not found at {SHARED_DATA} (needs dreambench/ and dreamrelation/)",
)

# Subjects whose official DreamBench class ("toy") is refined in prompts; see build.py.
REFINED_NOUNS = {"duck_toy", "monster_toy", "poop_emoji", "rc_car", "robot_toy"}


@pytest.mark.shared_data
@needs_shared
def test_files_exist_and_are_readable(bench: Benchmark) -> None:
    problems, n_images = check_files(bench, SHARED_DATA)
    assert problems == []
    assert n_images == 158 + 10 + 20  # subject photos, relation images, instance masks


@pytest.mark.shared_data
@needs_shared
def test_images_are_exactly_the_dreambench_release(bench: Benchmark) -> None:
    on_disk = {p.relative_to(SHARED_DATA).as_posix() for p in (SHARED_DATA / "dreambench").glob("*/*.jpg")}
    listed = {ref for s in bench.subjects.values() for ref in s.images}
    assert listed == on_disk


@pytest.mark.shared_data
@needs_shared
def test_class_nouns_follow_the_official_classes(bench: Benchmark) -> None:
    lines = (SHARED_DATA / "dreambench" / "prompts_and_classes.txt").read_text(encoding="utf-8").splitlines()
    start = lines.index("subject_name,class") + 1
    official = dict(line.split(",", 1) for line in lines[start : start + 30])
    assert set(official) == set(bench.subjects)
    for sid, subject in bench.subjects.items():
        if sid in REFINED_NOUNS:
            assert official[sid] == "toy" and subject.class_noun != "toy"
        else:
            assert subject.class_noun == official[sid], sid
