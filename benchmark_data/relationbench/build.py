"""Generate the RelationBench specs: DreamBench subjects in two-subject relations.

Two versions, both from the tables below: ``benchmark.yaml`` is version 1 (120 cases over 120
subject pairs; frozen, its bytes must never change) and ``benchmark_v2.yaml`` is version 2 (120
cases over 40 subject pairs, each pair in 3 relations, so a baseline that fine-tunes per subject
pair trains 40 times instead of 120).

Run ``python benchmark_data/relationbench/build.py`` to rewrite both specs next to this file, or
``python benchmark_data/relationbench/build.py --check`` to verify that the committed specs are
current (exit 1 if not). The output depends only on the tables below and ``SEED``: no file system
listing, no set or hash() ordering, so every machine writes the same bytes. Standard library only,
so it runs without the project installed. See README.md for the design.
"""

from __future__ import annotations

import random
import re
import sys
import textwrap
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Callable

SEED = 2025
CASES_PER_RELATION = 8
# No subject may appear in more cases than this: without a cap the seven dogs and the other
# limbed subjects, which fit most relations, would crowd out the objects.
MAX_SUBJECT_USES = 12
SPEC_FILE = Path(__file__).with_name("benchmark.yaml")

# Version 2: few subject pairs, each in several relations. PAIRS_V2 * RELATIONS_PER_PAIR_V2 cases,
# CASES_PER_RELATION per relation (120 = 40 * 3 = 15 * 8).
PAIRS_V2 = 40
RELATIONS_PER_PAIR_V2 = 3
# No subject in more pairs than this (4 pairs = 12 cases, v1's MAX_SUBJECT_USES).
MAX_SUBJECT_PAIRS_V2 = 4
SEARCH_STEPS_V2 = 20_000  # the search takes 55 steps for SEED; this bounds a bad edit or seed
SPEC_FILE_V2 = Path(__file__).with_name("benchmark_v2.yaml")

# DreamRelation's default two-subject layout (inference code), used for face-to-face interactions.
DEFAULT_TWO_BOXES = ((0.0, 0.2, 0.55, 0.85), (0.55, 0.26, 0.95, 0.90))

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class SubjectRow:
    id: str
    class_noun: str
    category: str
    n_images: int  # files are dreambench/<id>/00.jpg ... in the DreamBench release


# The official DreamBench class (prompts_and_classes.txt) is the class noun, except for the five
# subjects whose official class is "toy": five identical nouns would make prompts such as "a toy
# riding a toy" ambiguous, so those get the noun a person would use. Categories say what a subject
# can do in a relation: "animal", "plush" and "figure" have limbs and can act; the rest are things.
SUBJECTS: tuple[SubjectRow, ...] = (
    SubjectRow("backpack", "backpack", "bag", 6),
    SubjectRow("backpack_dog", "backpack", "bag", 5),
    SubjectRow("bear_plushie", "stuffed animal", "plush", 5),
    SubjectRow("berry_bowl", "bowl", "vessel", 6),
    SubjectRow("can", "can", "vessel", 6),
    SubjectRow("candle", "candle", "object", 5),
    SubjectRow("cat", "cat", "animal", 5),
    SubjectRow("cat2", "cat", "animal", 5),
    SubjectRow("clock", "clock", "object", 6),
    SubjectRow("colorful_sneaker", "sneaker", "footwear", 5),
    SubjectRow("dog", "dog", "animal", 5),
    SubjectRow("dog2", "dog", "animal", 6),
    SubjectRow("dog3", "dog", "animal", 6),
    SubjectRow("dog5", "dog", "animal", 5),
    SubjectRow("dog6", "dog", "animal", 5),
    SubjectRow("dog7", "dog", "animal", 5),
    SubjectRow("dog8", "dog", "animal", 5),
    SubjectRow("duck_toy", "rubber duck", "toy", 4),  # official class: toy
    SubjectRow("fancy_boot", "boot", "footwear", 6),
    SubjectRow("grey_sloth_plushie", "stuffed animal", "plush", 5),
    SubjectRow("monster_toy", "toy monster", "figure", 5),  # official class: toy
    SubjectRow("pink_sunglasses", "glasses", "eyewear", 6),
    SubjectRow("poop_emoji", "poop emoji", "toy", 5),  # official class: toy
    SubjectRow("rc_car", "toy car", "vehicle", 5),  # official class: toy
    SubjectRow("red_cartoon", "cartoon", "figure", 4),
    SubjectRow("robot_toy", "toy robot", "figure", 5),  # official class: toy
    SubjectRow("shiny_sneaker", "sneaker", "footwear", 6),
    SubjectRow("teapot", "teapot", "vessel", 5),
    SubjectRow("vase", "vase", "vessel", 6),
    SubjectRow("wolf_plushie", "stuffed animal", "plush", 5),
)

# Nouns that take no article ("a dog wearing glasses").
PLURAL_NOUNS = frozenset({"glasses"})

AGENTS = ("animal", "plush", "figure")  # subjects with limbs: they can hug, dance, carry
THINGS = ("toy", "vehicle", "bag", "eyewear", "footwear", "vessel", "object")

# DreamRelation sample triplets (data-root relative) that serve as reference poses.
REFERENCE_POSE_SETS = {"hug": ("dreamrelation/hug", 5), "shake_hands": ("dreamrelation/shake", 5)}


@dataclass(frozen=True)
class RelationRow:
    id: str
    phrase: str
    kind: str  # interaction / spatial / action (relbench.benchmark.RelationKind)
    fits: tuple[tuple[str, ...], ...]
    layout: tuple[Box, Box]  # boxes for role 0 and role 1, before an optional left-right mirror


# Layouts: interactions side by side (DreamRelation's default); "carry" and "ride" overlap the two
# boxes; "on top of" and "peeking out of" stack them; "behind" puts the back subject higher and
# partly covered. Boxes are normalised xyxy, origin top left.
RELATIONS: tuple[RelationRow, ...] = (
    RelationRow("hug", "hugging", "interaction", (AGENTS, AGENTS), DEFAULT_TWO_BOXES),
    RelationRow("shake_hands", "shaking hands with", "interaction", (AGENTS, AGENTS), DEFAULT_TWO_BOXES),
    RelationRow("high_five", "giving a high five to", "interaction", (AGENTS, AGENTS), DEFAULT_TWO_BOXES),
    RelationRow("dance", "dancing with", "interaction", (AGENTS, AGENTS), DEFAULT_TWO_BOXES),
    RelationRow(
        "play_chess", "playing chess with", "interaction", (AGENTS, AGENTS),
        ((0.0, 0.25, 0.42, 0.9), (0.58, 0.25, 1.0, 0.9)),  # a board between them
    ),
    RelationRow(
        "sit_back_to_back", "sitting back to back with", "interaction", (AGENTS, AGENTS),
        ((0.05, 0.25, 0.5, 0.9), (0.5, 0.25, 0.95, 0.9)),  # touching at the backs
    ),
    RelationRow(
        "carry", "carrying", "action", (AGENTS, ("toy", "bag", "footwear", "vessel", "object")),
        ((0.1, 0.1, 0.8, 0.95), (0.45, 0.4, 0.85, 0.8)),  # the load overlaps the carrier's front
    ),
    RelationRow(
        "ride", "riding", "action", (("plush", "figure", "toy"), ("animal", "vehicle")),
        ((0.3, 0.05, 0.7, 0.55), (0.1, 0.4, 0.9, 0.95)),  # rider overlaps the mount's back
    ),
    RelationRow(
        "push", "pushing", "action", (AGENTS, ("toy", "vehicle", "vessel")),
        ((0.0, 0.2, 0.5, 0.9), (0.45, 0.45, 0.95, 0.9)),  # pusher's front touches the load
    ),
    RelationRow(
        "chase", "chasing", "action", (("animal",), ("animal", "plush", "toy", "vehicle")),
        ((0.0, 0.35, 0.45, 0.85), (0.55, 0.4, 0.95, 0.8)),  # a gap between chaser and chased
    ),
    RelationRow(
        "wear", "wearing", "action", (AGENTS, ("bag", "eyewear")),
        ((0.1, 0.1, 0.9, 0.95), (0.3, 0.3, 0.7, 0.7)),  # worn item inside the wearer's box
    ),
    RelationRow(
        "on_top_of", "on top of", "spatial", (("plush", "figure", "toy"), ("vehicle", "bag", "footwear", "vessel", "object")),
        ((0.3, 0.05, 0.7, 0.5), (0.2, 0.45, 0.8, 0.95)),  # stacked, touching
    ),
    RelationRow(
        "next_to", "next to", "spatial", (AGENTS + THINGS, AGENTS + THINGS),
        ((0.05, 0.3, 0.48, 0.9), (0.52, 0.3, 0.95, 0.9)),
    ),
    RelationRow(
        "behind", "behind", "spatial", (AGENTS + ("toy",), ("vehicle", "bag", "footwear", "vessel", "object")),
        ((0.35, 0.1, 0.9, 0.7), (0.1, 0.35, 0.65, 0.95)),  # the front subject covers part of the back one
    ),
    RelationRow(
        "peek_out_of", "peeking out of", "spatial", (AGENTS + ("toy",), ("bag",)),
        ((0.3, 0.1, 0.7, 0.55), (0.15, 0.35, 0.85, 0.95)),  # head and shoulders above the bag's opening
    ),
)

# Worn items sit where they are worn, not at the centre of the wearer.
WEAR_BOX_BY_CATEGORY: dict[str, Box] = {
    "eyewear": (0.3, 0.15, 0.7, 0.35),
    "bag": (0.25, 0.35, 0.75, 0.75),
}


def noun_phrase(noun: str) -> str:
    """The noun with its indefinite article: "a dog", "an astronaut", "glasses"."""
    if noun in PLURAL_NOUNS:
        return noun
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def prompt_for(relation: RelationRow, nouns: tuple[str, str]) -> str:
    return f"{noun_phrase(nouns[0])} {relation.phrase} {noun_phrase(nouns[1])}"


def mirror(box: Box) -> Box:
    x0, y0, x1, y1 = box
    return (round(1.0 - x1, 4), y0, round(1.0 - x0, 4), y1)


def boxes_for(relation: RelationRow, subjects: tuple[SubjectRow, SubjectRow], mirrored: bool) -> tuple[Box, Box]:
    first, second = relation.layout
    if relation.id == "wear":
        second = WEAR_BOX_BY_CATEGORY[subjects[1].category]
    if mirrored:
        first, second = mirror(first), mirror(second)
    return first, second


def candidate_pairs(relation: RelationRow) -> list[list[tuple[str, str]]]:
    """Unordered subject pairs that fit the relation, each with the orientations (role order) that fit.

    Pairs whose subjects share a class noun ("a dog hugging a dog") are left out: the prompt could
    not say which subject is which, for a text-image metric or for the model's phrase conditioning.
    """
    by_pair: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for a in SUBJECTS:
        for b in SUBJECTS:
            if a.id == b.id or a.class_noun == b.class_noun:
                continue
            if a.category in relation.fits[0] and b.category in relation.fits[1]:
                key = (min(a.id, b.id), max(a.id, b.id))
                by_pair.setdefault(key, []).append((a.id, b.id))
    return [by_pair[key] for key in sorted(by_pair)]


def choose_cases(rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    """Pick CASES_PER_RELATION ordered pairs per relation, spreading subjects and pairs.

    Relations with the fewest candidate pairs choose first. Each pick takes the candidate whose
    pair was used least in other relations, then whose subjects were used least in this relation,
    then overall, with a seeded shuffle breaking ties, and never a subject at MAX_SUBJECT_USES.
    """
    subject_uses = {s.id: 0 for s in SUBJECTS}
    pair_uses: dict[tuple[str, str], int] = {}
    chosen: dict[str, list[tuple[str, str]]] = {}
    candidates = {r.id: candidate_pairs(r) for r in RELATIONS}
    order = sorted(RELATIONS, key=lambda r: (len(candidates[r.id]), r.id))
    for relation in order:
        pool = candidates[relation.id]
        rng.shuffle(pool)
        picks: list[tuple[str, str]] = []
        picked: list[str] = []  # subjects of this relation's picks so far
        for _ in range(CASES_PER_RELATION):
            best = None
            best_key = None
            for rank, orientations in enumerate(pool):
                a, b = orientations[0]
                if subject_uses[a] >= MAX_SUBJECT_USES or subject_uses[b] >= MAX_SUBJECT_USES:
                    continue
                key = (
                    pair_uses.get((min(a, b), max(a, b)), 0),
                    max(picked.count(a), picked.count(b)),
                    max(subject_uses[a], subject_uses[b]),
                    subject_uses[a] + subject_uses[b],
                    rank,
                )
                if best_key is None or key < best_key:
                    best, best_key = orientations, key
            if best is None:
                raise SystemExit(f"build.py: relation {relation.id!r}: too few pairs under MAX_SUBJECT_USES={MAX_SUBJECT_USES}")
            pool.remove(best)
            pair = best[0] if len(best) == 1 else rng.choice(best)
            picks.append(pair)
            picked.extend(pair)
            subject_uses[pair[0]] += 1
            subject_uses[pair[1]] += 1
            key = (min(pair), max(pair))
            pair_uses[key] = pair_uses.get(key, 0) + 1
        chosen[relation.id] = picks
    return chosen


def reference_poses(relation_id: str) -> list[dict[str, Any]]:
    if relation_id not in REFERENCE_POSE_SETS:
        return []
    folder, count = REFERENCE_POSE_SETS[relation_id]
    return [
        {
            "keypoints": f"{folder}/videos/{i}/motion_keyposes.pth",
            "skeleton": "ap10k",
            "image": f"{folder}/videos/{i}/motion.png",
            "masks": [f"{folder}/masks/{i}/motion0.png", f"{folder}/masks/{i}/motion1.png"],
        }
        for i in range(count)
    ]


Pair = tuple[str, str]  # two subject ids, sorted


def pair_tables() -> tuple[dict[tuple[str, Pair], list[tuple[str, str]]], dict[Pair, list[str]]]:
    """(relation id, pair) -> the role orders that fit, and pair -> the relations it fits (RELATIONS order)."""
    orientations: dict[tuple[str, Pair], list[tuple[str, str]]] = {}
    fitting: dict[Pair, list[str]] = {}
    for relation in RELATIONS:
        for options in candidate_pairs(relation):
            a, b = options[0]
            pair = (min(a, b), max(a, b))
            orientations[(relation.id, pair)] = options
            fitting.setdefault(pair, []).append(relation.id)
    return orientations, fitting


def choose_pairs_v2(rng: random.Random) -> list[tuple[Pair, list[str]]]:
    """PAIRS_V2 subject pairs, each with RELATIONS_PER_PAIR_V2 relations it fits, so that every
    relation gets exactly CASES_PER_RELATION cases and no subject is in more than
    MAX_SUBJECT_PAIRS_V2 pairs. Returns (pair, relation ids) in the order they were picked.

    A depth-first search. A relation's slack is how many more cases it could still get (bounded by
    the free pairs that fit it, the free places of the subjects that fit each of its roles, and the
    pairs still to pick) less the cases it still needs. Each step serves the relation with the least
    slack: it tries the free pairs that fit it, those whose subjects are in the fewest pairs first
    (a seeded shuffle breaking ties), each with the other relations of least slack first; a step
    where some relation's slack is negative goes back. SEED needs 55 steps (40 pairs, a little
    backtracking); about 3 seeds in 100 run out of SEARCH_STEPS_V2, and the script stops.
    """
    orientations, fitting = pair_tables()
    pool = sorted(fitting)
    rng.shuffle(pool)
    rank = {pair: i for i, pair in enumerate(pool)}
    need = {r.id: CASES_PER_RELATION for r in RELATIONS}
    uses = {s.id: 0 for s in SUBJECTS}
    chosen: list[tuple[Pair, list[str]]] = []
    steps = 0

    def places(subjects: set[str]) -> int:
        return sum(MAX_SUBJECT_PAIRS_V2 - uses[sid] for sid in subjects)

    def slack(rid: str, free: list[Pair], left: int) -> int:
        fit = [pair for pair in free if rid in fitting[pair]]
        roles = [{order[k] for pair in fit for order in orientations[(rid, pair)]} for k in (0, 1)]
        room = min(len(fit), places(roles[0]), places(roles[1]), places(roles[0] | roles[1]) // 2, left)
        return room - need[rid]

    def step() -> bool:
        nonlocal steps
        left = PAIRS_V2 - len(chosen)
        if left == 0:
            return True
        steps += 1
        if steps > SEARCH_STEPS_V2:
            raise SystemExit(f"build.py: v2: no choice found in {SEARCH_STEPS_V2} search steps")
        taken = {pair for pair, _ in chosen}
        free = [
            pair for pair in pool
            if pair not in taken and max(uses[pair[0]], uses[pair[1]]) < MAX_SUBJECT_PAIRS_V2
            and sum(need[rid] > 0 for rid in fitting[pair]) >= RELATIONS_PER_PAIR_V2
        ]
        slacks = {rid: slack(rid, free, left) for rid in need if need[rid] > 0}
        if min(slacks.values()) < 0:
            return False
        relation = min(slacks, key=lambda rid: (slacks[rid], rid))
        tries = sorted(
            (pair for pair in free if relation in fitting[pair]),
            key=lambda pair: (max(uses[pair[0]], uses[pair[1]]), uses[pair[0]] + uses[pair[1]], rank[pair]),
        )
        for pair in tries:
            others = [rid for rid in fitting[pair] if rid != relation and need[rid] > 0]
            for extra in sorted(combinations(others, RELATIONS_PER_PAIR_V2 - 1), key=lambda c: (sum(slacks[r] for r in c), c)):
                relations = [relation, *extra]
                chosen.append((pair, relations))
                for rid in relations:
                    need[rid] -= 1
                for sid in pair:
                    uses[sid] += 1
                if step():
                    return True
                chosen.pop()
                for rid in relations:
                    need[rid] += 1
                for sid in pair:
                    uses[sid] -= 1
        return False

    if not step():
        raise SystemExit("build.py: v2: no choice of pairs meets the rules")
    return chosen


def _subject_entries(subjects: list[SubjectRow]) -> list[dict[str, Any]]:
    return [
        {
            "id": s.id,
            "class_noun": s.class_noun,
            "category": s.category,
            "images": [f"dreambench/{s.id}/{i:02d}.jpg" for i in range(s.n_images)],
        }
        for s in subjects
    ]


def _relation_entries() -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "phrase": r.phrase,
            "kind": r.kind,
            "fits": [list(role) for role in r.fits],
            **({"reference_poses": poses} if (poses := reference_poses(r.id)) else {}),
        }
        for r in RELATIONS
    ]


def _case_entry(relation: RelationRow, a: str, b: str, mirrored: bool) -> dict[str, Any]:
    rows = {s.id: s for s in SUBJECTS}
    pair = (rows[a], rows[b])
    return {
        "id": f"{relation.id}-{a}-{b}",
        "subjects": [a, b],
        "relation": relation.id,
        "prompt": prompt_for(relation, (pair[0].class_noun, pair[1].class_noun)),
        "boxes": [list(box) for box in boxes_for(relation, pair, mirrored)],
    }


def build_spec(seed: int = SEED) -> dict[str, Any]:
    """Version 1, the whole spec as plain data, in the layout relbench.spec reads."""
    rng = random.Random(seed)
    chosen = choose_cases(rng)
    cases = []
    for relation in RELATIONS:  # cases in relation order, then in the order they were picked
        for a, b in chosen[relation.id]:
            mirrored = rng.random() < 0.5  # half the cases put role 0 on the right
            cases.append(_case_entry(relation, a, b, mirrored))
    return {
        "name": "relationbench",
        "version": "1",
        "description": (
            f"Two-subject relation-aware customization: the 30 DreamBench subjects in {len(cases)} cases "
            f"over {len(RELATIONS)} relations (interactions, actions, spatial placements), each with a "
            "prompt and a layout box per subject. Authored for relbench; not the upstream "
            "QingyuShi/RelationBench data set."
        ),
        "subjects": _subject_entries(list(SUBJECTS)),
        "relations": _relation_entries(),
        "cases": cases,
    }


def build_spec_v2(seed: int = SEED) -> dict[str, Any]:
    """Version 2: PAIRS_V2 subject pairs, each in RELATIONS_PER_PAIR_V2 relations; same layout."""
    rng = random.Random(seed)
    chosen = choose_pairs_v2(rng)
    orientations, _ = pair_tables()
    cases = []
    for relation in RELATIONS:  # cases in relation order, then in the order the pairs were picked
        for pair, relation_ids in chosen:
            if relation.id not in relation_ids:
                continue
            options = orientations[(relation.id, pair)]
            a, b = options[0] if len(options) == 1 else rng.choice(options)  # the role order, when both fit
            mirrored = rng.random() < 0.5  # half the cases put role 0 on the right
            cases.append(_case_entry(relation, a, b, mirrored))
    used = {sid for pair, _ in chosen for sid in pair}
    subjects = [s for s in SUBJECTS if s.id in used]
    return {
        "name": "relationbench",
        "version": "2",
        "description": (
            f"Two-subject relation-aware customization: {len(subjects)} DreamBench subjects in {len(chosen)} "
            f"subject pairs, each pair in {RELATIONS_PER_PAIR_V2} relations: {len(cases)} cases over "
            f"{len(RELATIONS)} relations (interactions, actions, spatial placements), each with a prompt and a "
            "layout box per subject. Fewer pairs than version 1, so baselines that fine-tune per subject pair "
            "train once per pair. Authored for relbench; not the upstream QingyuShi/RelationBench data set."
        ),
        "subjects": _subject_entries(subjects),
        "relations": _relation_entries(),
        "cases": cases,
    }


# version -> (generator, spec file)
VERSIONS: dict[str, tuple[Callable[..., dict[str, Any]], Path]] = {"1": (build_spec, SPEC_FILE), "2": (build_spec_v2, SPEC_FILE_V2)}


# --- YAML output: written by hand so the file is compact, stable and readable --------------------

_PLAIN = re.compile(r"^[a-z][a-z0-9 _./-]*$")
# Plain scalars YAML 1.1 (PyYAML) would read as booleans or null.
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED and not text.endswith(" "):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _flow(values: list[Any]) -> str:
    return "[" + ", ".join(_flow(v) if isinstance(v, list) else _scalar(v) for v in values) + "]"


def render_yaml(spec: dict[str, Any]) -> str:
    lines = [
        "# RelationBench: generated by benchmark_data/relationbench/build.py; do not edit by hand.",
        "# Change build.py and rerun it (tests fail when this file and the generator disagree).",
        f"name: {_scalar(spec['name'])}",
        f'version: "{spec["version"]}"',
        "description: >-",  # folded: the wrapped lines read back as one line
        *(f"  {line}" for line in textwrap.wrap(spec["description"], width=96, break_on_hyphens=False)),
        "subjects:",
    ]
    for s in spec["subjects"]:
        lines += [
            f"  - id: {_scalar(s['id'])}",
            f"    class_noun: {_scalar(s['class_noun'])}",
            f"    category: {_scalar(s['category'])}",
            f"    images: {_flow(s['images'])}",
        ]
    lines.append("relations:")
    for r in spec["relations"]:
        lines += [
            f"  - id: {_scalar(r['id'])}",
            f"    phrase: {_scalar(r['phrase'])}",
            f"    kind: {_scalar(r['kind'])}",
            f"    fits: {_flow(r['fits'])}",
        ]
        if r.get("reference_poses"):
            lines.append("    reference_poses:")
            for pose in r["reference_poses"]:
                lines += [
                    f"      - keypoints: {_scalar(pose['keypoints'])}",
                    f"        skeleton: {_scalar(pose['skeleton'])}",
                    f"        image: {_scalar(pose['image'])}",
                    f"        masks: {_flow(pose['masks'])}",
                ]
    lines.append("cases:")
    for c in spec["cases"]:
        lines += [
            f"  - id: {_scalar(c['id'])}",
            f"    subjects: {_flow(c['subjects'])}",
            f"    relation: {_scalar(c['relation'])}",
            f"    prompt: {_scalar(c['prompt'])}",
            f"    boxes: {_flow(c['boxes'])}",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(f"usage: python {Path(__file__).name} [--check]", file=sys.stderr)
        return 2
    stale = 0
    for build, path in VERSIONS.values():
        spec = build()
        text = render_yaml(spec)
        if argv == ["--check"]:
            current = path.read_text(encoding="utf-8") if path.is_file() else ""
            if current != text:
                print(f"{path}: out of date; run python {Path(__file__).name} to rewrite it", file=sys.stderr)
                stale += 1
            else:
                print(f"{path}: up to date")
            continue
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({len(spec['cases'])} cases)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
