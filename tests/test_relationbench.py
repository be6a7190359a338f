"""The built-in RelationBench specs (v1 and v2): generator and committed YAML agree, structure,
layouts, files, and the names (relationbench, relationbench@1, relationbench@2) that load them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
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
from relbench.benchmarks import BUILTIN, builtin_spec_path, builtin_versions, load_benchmark
from relbench.errors import UnknownNameError
from relbench.spec import check_files

REPO = Path(__file__).resolve().parents[1]
SPEC_DIR = REPO / "benchmark_data" / "relationbench"
SHARED_DATA = REPO.parent / "shared" / "data"
MAX_USES = 12  # no subject in more cases than this
MIN_USES = 3  # every subject shows up in a few cases
VERSIONS = ("1", "2")
# Version 1 is frozen: these digests were taken from the committed benchmark.yaml before version 2
# existed. The file's sha256 is what run.json records (spec_sha256, its first 16 hex digits), so a
# changed byte would refuse to resume every v1 run; the cases' digest names what must never change.
V1_FILE_SHA256 = "fecf75a3fbfe3baeb90cb5be4c08f9cf0eeceea6fc6cf821d840276150090e1e"
V1_CASES_SHA256 = "39e1d1a97e1e627217c243a987100a5d745623c55cf9116095c417e53e6d5959"


def _load_build() -> ModuleType:
    # build.py is a script beside the spec, not an importable package module.
    spec = importlib.util.spec_from_file_location("relationbench_build", SPEC_DIR / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


build = _load_build()


@pytest.fixture(scope="module", params=VERSIONS, ids=lambda v: f"v{v}")
def bench(request: pytest.FixtureRequest) -> Benchmark:
    """Each version in turn: the rules every version keeps."""
    return load_benchmark(f"relationbench@{request.param}")


@pytest.fixture(scope="module")
def v1() -> Benchmark:
    return load_benchmark("relationbench@1")


@pytest.fixture(scope="module")
def v2() -> Benchmark:
    return load_benchmark("relationbench@2")


def _spec_file(version: str) -> Path:
    return build.VERSIONS[version][1]


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _inside(inner: Box, outer: Box) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _centre(box: Box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


# --- generator and committed file --------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_committed_yaml_is_the_generator_output(version: str) -> None:
    generate, path = build.VERSIONS[version]
    committed = path.read_text(encoding="utf-8")
    assert committed == build.render_yaml(generate()), (
        f"{path.name} and build.py disagree: run python benchmark_data/relationbench/build.py"
    )
    assert builtin_spec_path(f"relationbench@{version}").resolve() == path.resolve()


@pytest.mark.parametrize("version", VERSIONS)
def test_yaml_reads_back_as_the_generated_data(version: str) -> None:
    # Guards the hand-written YAML emitter: quoting, floats, the folded description.
    generate, path = build.VERSIONS[version]
    committed = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert committed == generate()
    assert committed["version"] == version and committed["name"] == "relationbench"


def test_v1_is_unchanged() -> None:
    data = (SPEC_DIR / "benchmark.yaml").read_bytes()
    assert hashlib.sha256(data).hexdigest() == V1_FILE_SHA256
    cases = yaml.safe_load(data)["cases"]
    assert hashlib.sha256(json.dumps(cases, sort_keys=True).encode()).hexdigest() == V1_CASES_SHA256
    assert len(cases) == 120 and cases[0]["id"] == "hug-monster_toy-dog5"


def test_generator_is_seeded_and_independent_of_hash_seed() -> None:
    for generate, _ in build.VERSIONS.values():
        other = generate(seed=build.SEED + 1)
        assert [c["id"] for c in other["cases"]] != [c["id"] for c in generate()["cases"]]
    for hash_seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, str(SPEC_DIR / "build.py"), "--check"], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.count(": up to date") == len(VERSIONS)


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
    assert bench.name == "relationbench"
    assert len(bench.relations) == 15
    assert len(bench.cases) >= 120
    assert {r.kind for r in bench.relations.values()} == set(RelationKind)
    for sid, subject in bench.subjects.items():
        assert subject.images == tuple(f"dreambench/{sid}/{i:02d}.jpg" for i in range(len(subject.images)))


def test_v1_counts(v1: Benchmark) -> None:
    assert v1.version == "1"
    assert len(v1.subjects) == 30
    assert sum(len(s.images) for s in v1.subjects.values()) == 158
    assert len({frozenset(case.subjects) for case in v1.cases}) == 120  # a training per case for per-pair baselines


def test_versions_share_subjects_and_relations(v1: Benchmark, v2: Benchmark) -> None:
    # One set of rules: v2 takes v1's subject rows (those it uses) and the very same relations
    # (phrases, kinds, role fits, hug's and shake_hands' reference poses).
    assert v2.relations == v1.relations
    assert v2.relations["hug"].reference_poses and v2.relations["shake_hands"].reference_poses
    assert set(v2.subjects) <= set(v1.subjects)
    assert all(v2.subjects[sid] == v1.subjects[sid] for sid in v2.subjects)
    assert "pink_sunglasses" not in v2.subjects  # with any partner it fits only wear and next_to


def test_v2_has_few_pairs_each_in_three_relations(v2: Benchmark) -> None:
    assert v2.version == "2"
    assert len(v2.cases) >= 120
    relations_of: dict[frozenset[str], set[str]] = {}
    for case in v2.cases:
        relations_of.setdefault(frozenset(case.subjects), set()).add(case.relation)
    assert len(relations_of) <= 40, "at most 40 subject pairs: 40 trainings for per-pair baselines"
    assert min(len(r) for r in relations_of.values()) >= 3, "each pair in at least 3 relations"
    assert sum(len(r) for r in relations_of.values()) == len(v2.cases)  # no (pair, relation) twice
    assert set(Counter(case.relation for case in v2.cases).values()) == {build.CASES_PER_RELATION}
    assert {sid for case in v2.cases for sid in case.subjects} == set(v2.subjects), "no unused subject listed"
    pairs_per_subject = Counter(sid for pair in relations_of for sid in pair)
    assert max(pairs_per_subject.values()) <= build.MAX_SUBJECT_PAIRS_V2


def test_v2_search_reports_when_it_cannot_meet_the_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    # The generator stops rather than write a spec that breaks the rules.
    monkeypatch.setattr(build, "MAX_SUBJECT_PAIRS_V2", 1)  # two bags cannot hold eight wear cases
    with pytest.raises(SystemExit, match="v2: no choice of pairs meets the rules"):
        build.build_spec_v2()


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


def test_v1_pairs_are_spread(v1: Benchmark) -> None:
    pairs = Counter(frozenset(case.subjects) for case in v1.cases)
    assert max(pairs.values()) <= 2, pairs.most_common(3)


def test_prompts_name_both_subjects_with_articles(bench: Benchmark) -> None:
    for case in bench.cases:
        first, second = (bench.subjects[sid].class_noun for sid in case.subjects)
        assert first != second, f"{case.id}: both subjects are called {first!r}"
        phrase = bench.relations[case.relation].phrase
        assert case.prompt == f"{build.noun_phrase(first)} {phrase} {build.noun_phrase(second)}"
        assert not re.search(r"\ba [aeiou]", case.prompt), case.prompt


def test_v1_prompt_example(v1: Benchmark) -> None:
    assert "a dog wearing glasses" in {c.prompt for c in v1.cases}


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


def test_wear_puts_a_bag_on_the_body(v2: Benchmark) -> None:
    # v2 has no glasses: every wear case is a bag, at the wearer's body.
    wear = [c for c in v2.cases if c.relation == "wear"]
    assert len(wear) == build.CASES_PER_RELATION
    for case in wear:
        assert v2.subjects[case.subjects[1]].category == "bag"
        wearer, bag = case.boxes
        assert (bag[1], bag[3]) == (0.35, 0.75) and _inside(bag, wearer), case.id


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


# --- names and versions ---------------------------------------------------------------------------


def test_names_load_their_version() -> None:
    assert builtin_versions("relationbench") == ["1", "2"]
    assert builtin_spec_path("relationbench") == builtin_spec_path("relationbench@2")  # the latest
    assert builtin_spec_path("relationbench@1").name == "benchmark.yaml"
    assert builtin_spec_path("relationbench@2").name == "benchmark_v2.yaml"
    assert load_benchmark("relationbench@1").label == "relationbench v1"
    assert load_benchmark("relationbench").label == "relationbench v2"
    for name, versions in BUILTIN.items():  # each registered file holds the name and version it is listed under
        for version in versions:
            bench = load_benchmark(f"{name}@{version}")
            assert (bench.name, bench.version) == (name, version)


def test_unknown_version_lists_the_versions() -> None:
    with pytest.raises(UnknownNameError) as error:
        load_benchmark("relationbench@3")
    assert str(error.value) == (
        "unknown benchmark version 'relationbench@3'. Did you mean 'relationbench@2', 'relationbench@1'? "
        "Available: relationbench@1, relationbench@2 (relationbench alone means relationbench@2)"
    )
    with pytest.raises(UnknownNameError) as error:
        load_benchmark("relbench@2")
    assert str(error.value) == (
        "unknown benchmark 'relbench@2'. Did you mean 'relationbench'? Available: demo, relationbench "
        "(or give a path to a .yaml/.json spec)"
    )


def test_spec_paths_with_an_at_sign_are_files(tmp_path: Path) -> None:
    spec = tmp_path / "relationbench@9.yaml"
    spec.write_bytes((SPEC_DIR / "benchmark.yaml").read_bytes())
    assert load_benchmark(str(spec)).version == "1"


@pytest.mark.parametrize("version", VERSIONS)
def test_run_identity_records_the_version(tmp_path: Path, version: str) -> None:
    from relbench.runner import EvaluateOptions, plan_evaluation

    bench = load_benchmark(f"relationbench@{version}")
    for sid in bench.cases[0].subjects:  # the case files only need to exist for the plan
        for ref in bench.subjects[sid].images:
            (tmp_path / ref).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / ref).touch()
    options = EvaluateOptions(benchmark=f"relationbench@{version}", output=tmp_path / "run", methods=["reference-collage"],
                              metrics=["none"], limit=1, data_root=tmp_path, progress=False)
    identity = plan_evaluation(options).run_config({})["benchmark"]
    digest = hashlib.sha256(_spec_file(version).read_bytes()).hexdigest()[:16]
    assert identity == {"name": "relationbench", "version": version, "spec_sha256": digest}
    if version == "1":
        assert digest == V1_FILE_SHA256[:16]  # what every v1 run.json holds


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
    photos = sum(len(s.images) for s in bench.subjects.values())
    assert photos == {"1": 158, "2": 141}[bench.version]
    assert n_images == photos + 10 + 20  # subject photos, relation images, instance masks


@pytest.mark.shared_data
@needs_shared
def test_images_are_exactly_the_dreambench_release(v1: Benchmark) -> None:
    on_disk = {p.relative_to(SHARED_DATA).as_posix() for p in (SHARED_DATA / "dreambench").glob("*/*.jpg")}
    listed = {ref for s in v1.subjects.values() for ref in s.images}
    assert listed == on_disk


@pytest.mark.shared_data
@needs_shared
def test_class_nouns_follow_the_official_classes(v1: Benchmark) -> None:
    # v2's subjects are v1's rows (test_versions_share_subjects_and_relations).
    lines = (SHARED_DATA / "dreambench" / "prompts_and_classes.txt").read_text(encoding="utf-8").splitlines()
    start = lines.index("subject_name,class") + 1
    official = dict(line.split(",", 1) for line in lines[start : start + 30])
    assert set(official) == set(v1.subjects)
    for sid, subject in v1.subjects.items():
        if sid in REFINED_NOUNS:
            assert official[sid] == "toy" and subject.class_noun != "toy"
        else:
            assert subject.class_noun == official[sid], sid
