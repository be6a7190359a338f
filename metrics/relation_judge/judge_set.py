"""Labelled judge sets: images with questions whose right answers are known, for ``relbench judge check``.

A judge set is a spec-like YAML or JSON file (read like benchmark specs: ``relbench.spec.read_spec_file``,
every problem as ``<file>: <field>: <problem>``)::

    judge_set: 1                       # format version
    name: dreamrelation-triplets
    description: free text
    label_source: construction         # default label source of every question (else "unspecified")
    relations:                         # relation id -> phrase the questions use ("a lion hugging a bear")
      hug: hugging
      shake: shaking hands with
    items:
      - id: hug-0-motion               # lowercase id, unique
        image: dreamrelation/hug/videos/0/motion.png   # data-root relative, ./relative to the set file, or absolute
        subjects: [lion, polar bear]   # class nouns of the subjects, in the order questions name them
        questions:
          - {ask: relation, relation: hug, label: yes, group: positive}
          - {ask: relation, relation: shake, label: no, group: other_relation}
          - {ask: presence, subject: lion, label: yes, group: present}
          - {ask: presence, subject: goat, label: no, group: absent_class}
          - {ask: choice, relation: hug, options: [shake, hug], group: choice}
      - id: hug-0-collage              # instead of image: the reference collage of images in boxes
        collage: {images: [a.png, b.png], boxes: [[0, 0.2, 0.55, 0.85], [0.55, 0.26, 0.95, 0.9]], size: 512}
        subjects: [lion, polar bear]
        questions:
          - {ask: relation, relation: hug, label: no, group: collage}

Questions are rendered with the metrics' own templates (``templates``, ``TEMPLATE_VERSION``): a
relation question names the item's subjects with the relation's phrase, exactly as
``relation_vqa`` asks it; ``choice`` is ``relation_mc``'s multiple-choice question with the options
in the given order, asked in every cyclic rotation (CircularEval; its label is ``relation``).
``label`` is ``yes``/``no`` (YAML booleans too). ``group`` is free text (what kind of question it
is); ``label_source`` (on a question, an item or the set) says where the label comes from: the
builder writes ``construction``, users adding their own images write e.g. ``human``.

``build_triplet_set`` makes the default set from the DreamRelation triplets under the data root
(``<data-root>/dreamrelation/<relation>/``), labels right by construction:

* positive: each motion image with its own relation question (yes);
* other relation: the same image asked about each other relation of the set (no);
* present: a presence question per subject of the image (yes);
* absent class: presence questions about ``absent_per_image`` subject classes of other triplets
  that share no word with this image's subjects ("bear" is never asked of a "polar bear" image)
  (no); chosen seeded;
* collage: the reference collage of the triplet's concept images (each subject pasted into a
  layout box on grey, as the ``reference-collage`` method draws it) asked about the relation
  (no: both subjects, no relation) and about each subject (yes);
* choice: each motion image, the set's relations as options in a seeded order.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.benchmark import Box
from relbench.errors import Problem, RelbenchError, SpecError
from relbench.metrics.relation_judge import templates
# The spec reader's checker and box rule: judge sets report problems exactly as benchmark specs do.
from relbench.spec import _Checker, _parse_box, read_spec_file

if TYPE_CHECKING:
    from PIL import Image

FORMAT_VERSION = 1
ASK_KINDS = ("relation", "presence", "choice")
DEFAULT_LABEL_SOURCE = "unspecified"
CONSTRUCTION = "construction"
# The layout boxes DreamRelation's inference uses for two subjects (docs: the reference code's
# example), also the boxes of most RelationBench cases; and the collage's side in pixels.
COLLAGE_BOXES: tuple[Box, Box] = ((0.0, 0.2, 0.55, 0.85), (0.55, 0.26, 0.95, 0.90))
COLLAGE_SIZE = 512
COLLAGE_SIZES = (64, 2048)  # allowed range of a collage's side
# Phrases of the DreamRelation sample relations, RelationBench's wording for the same relations.
TRIPLET_PHRASES: dict[str, str] = {"hug": "hugging", "shake": "shaking hands with"}
TRIPLETS_FOLDER = "dreamrelation"


@dataclass(frozen=True)
class SetQuestion:
    ask: str  # relation | presence | choice
    label: bool | None  # relation / presence: the right answer; choice: None (``relation`` is right)
    relation: str | None = None  # relation asked about (choice: the true one)
    subject: str | None = None  # presence: the class noun asked about
    options: tuple[str, ...] = ()  # choice: relation ids in base order
    group: str = ""
    label_source: str = DEFAULT_LABEL_SOURCE


@dataclass(frozen=True)
class Collage:
    images: tuple[str, ...]
    boxes: tuple[Box, ...]
    size: int = COLLAGE_SIZE


@dataclass(frozen=True)
class SetItem:
    id: str
    subjects: tuple[str, ...]
    questions: tuple[SetQuestion, ...]
    image: str | None = None
    collage: Collage | None = None


@dataclass(frozen=True)
class JudgeSet:
    name: str
    relations: dict[str, str]  # id -> phrase
    items: tuple[SetItem, ...]
    description: str = ""
    path: Path | None = None  # the file it was read from (``./`` image refs are relative to it)
    digest: str = ""  # sha256 of its content (set_data), recorded with every check

    def question_text(self, item: SetItem, question: SetQuestion, options: Sequence[str] | None = None) -> str:
        """The text the judge is asked; ``options`` (relation ids) gives a choice question's order."""
        if question.ask == "presence":
            return templates.presence_question(str(question.subject))
        if question.ask == "relation":
            return templates.relation_question(item.subjects, self.relations[str(question.relation)])
        order = options if options is not None else question.options
        return templates.choice_question(item.subjects, [self.relations[rid] for rid in order])

    def counts(self) -> dict[str, int]:
        questions = [q for item in self.items for q in item.questions]
        return {
            "items": len(self.items),
            "yes_no": sum(q.ask != "choice" for q in questions),
            "yes": sum(q.label is True for q in questions),
            "no": sum(q.label is False for q in questions),
            "choice": sum(q.ask == "choice" for q in questions),
        }


# --------------------------------------------------------------------------------------------
# The file: data <-> JudgeSet


def set_data(judge_set: JudgeSet) -> dict[str, Any]:
    """The set as the plain data its file holds."""
    items = []
    for item in judge_set.items:
        entry: dict[str, Any] = {"id": item.id}
        if item.image is not None:
            entry["image"] = item.image
        if item.collage is not None:
            entry["collage"] = {"images": list(item.collage.images), "boxes": [list(b) for b in item.collage.boxes],
                                "size": item.collage.size}
        entry["subjects"] = list(item.subjects)
        questions = []
        for q in item.questions:
            record: dict[str, Any] = {"ask": q.ask}
            if q.relation is not None:
                record["relation"] = q.relation
            if q.subject is not None:
                record["subject"] = q.subject
            if q.options:
                record["options"] = list(q.options)
            if q.label is not None:
                record["label"] = "yes" if q.label else "no"
            record["group"] = q.group
            record["label_source"] = q.label_source
            questions.append(record)
        entry["questions"] = questions
        items.append(entry)
    return {"judge_set": FORMAT_VERSION, "name": judge_set.name, "description": judge_set.description,
            "relations": dict(judge_set.relations), "items": items}


def _digest(data: Mapping[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def with_digest(judge_set: JudgeSet) -> JudgeSet:
    return replace(judge_set, digest=_digest(set_data(judge_set)))


def write_judge_set(judge_set: JudgeSet, path: str | Path) -> Path:
    """Write the set as YAML (``.yaml``/``.yml``) or JSON (``.json``), atomically."""
    from relbench.atomic import atomic_write_text
    from relbench.errors import output_errors

    path = Path(path)
    data = set_data(judge_set)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    elif suffix in (".yaml", ".yml"):
        import yaml

        text = "# relbench judge set: edit or extend (see `relbench judge check --help`)\n" + yaml.safe_dump(
            data, sort_keys=False, allow_unicode=True, width=120, default_flow_style=None)
    else:
        raise RelbenchError(f"{path}: unsupported judge set format; expected .yaml, .yml or .json")
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return path


def load_judge_set(path: str | Path) -> JudgeSet:
    """Read and check a judge set file; every problem found is reported (``SpecError``)."""
    path = Path(path)
    if not path.is_file():
        raise RelbenchError(f"{path}: judge set file not found (`relbench judge build-set -o FILE` writes one)")
    judge_set, problems = parse_judge_set(read_spec_file(path), str(path), path)
    if problems or judge_set is None:
        raise SpecError(problems)
    return judge_set


def _label(check: _Checker, value: Any, where: str) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
        return value.strip().lower() == "yes"
    check.add(where, f"expected yes or no, got {value!r}")
    return None


def parse_judge_set(data: Any, file: str, path: Path | None = None) -> tuple[JudgeSet | None, list[Problem]]:
    check = _Checker(file)
    if not isinstance(data, dict):
        check.add("(top level)", f"expected a mapping with judge_set, name, relations and items, got {type(data).__name__}")
        return None, check.problems
    if data.get("judge_set") != FORMAT_VERSION:
        check.add("judge_set", f"expected {FORMAT_VERSION} (the format version), got {data.get('judge_set')!r}")
    known = {"judge_set", "name", "description", "label_source", "relations", "items"}
    for key in sorted(set(data) - known, key=str):
        check.add(str(key), f"unknown key; expected {', '.join(sorted(known))}")
    name = check.string(data, "name", "") or ""
    description = data.get("description") or ""
    if not isinstance(description, str):
        check.add("description", f"expected text, got {description!r}")
        description = ""
    set_source = check.string(data, "label_source", "", required=False) or DEFAULT_LABEL_SOURCE

    relations: dict[str, str] = {}
    raw_relations = data.get("relations")
    if not isinstance(raw_relations, dict) or not raw_relations:
        check.add("relations", f"expected a mapping of relation id -> phrase, got {raw_relations!r}")
    else:
        for rid, phrase in raw_relations.items():
            if not isinstance(rid, str) or not rid.strip() or not isinstance(phrase, str) or not phrase.strip():
                check.add(f"relations.{rid}", f"expected a relation id and a non-empty phrase, got {phrase!r}")
            else:
                relations[rid] = phrase

    items: list[SetItem] = []
    seen: set[str] = set()
    for where, entry in check.mappings(data, "items", required=True):
        item = _parse_item(check, entry, where, relations, set_source, path)
        if item is None:
            continue
        if item.id in seen:
            check.add(f"{where}.id", f"duplicate item id {item.id!r}")
            continue
        seen.add(item.id)
        items.append(item)
    if check.problems:
        return None, check.problems
    return with_digest(JudgeSet(name=name, relations=relations, items=tuple(items), description=description, path=path)), []


def _parse_item(check: _Checker, entry: dict[str, Any], where: str, relations: Mapping[str, str], set_source: str,
                path: Path | None) -> SetItem | None:
    before = len(check.problems)
    known = {"id", "image", "collage", "subjects", "questions", "label_source"}
    for key in sorted(set(entry) - known, key=str):
        check.add(f"{where}.{key}", f"unknown key; expected {', '.join(sorted(known))}")
    item_id = check.identifier(entry, where)
    subjects = tuple(check.string_list(entry, "subjects", where, required=True))
    source = check.string(entry, "label_source", where, required=False) or set_source
    image = check.string(entry, "image", where, required=False)
    collage = _parse_collage(check, entry.get("collage"), f"{where}.collage", len(subjects)) if "collage" in entry else None
    if (image is None) == ("collage" not in entry):
        check.add(where, "expected exactly one of image (a file) or collage (images pasted into boxes)")
    questions: list[SetQuestion] = []
    raw = entry.get("questions")
    if not isinstance(raw, list) or not raw:
        check.add(f"{where}.questions", f"expected a non-empty list of questions, got {raw!r}")
        raw = []
    for i, q in enumerate(raw):
        question = _parse_question(check, q, f"{where}.questions[{i}]", relations, source)
        if question is not None:
            questions.append(question)
    if len(check.problems) > before or item_id is None:
        return None
    return SetItem(id=item_id, subjects=subjects, questions=tuple(questions), image=image, collage=collage)


def _parse_collage(check: _Checker, value: Any, where: str, n_subjects: int) -> Collage | None:
    if not isinstance(value, dict):
        check.add(where, f"expected a mapping with images, boxes and size, got {value!r}")
        return None
    images = check.string_list(value, "images", where, required=True)
    raw_boxes = value.get("boxes", [list(b) for b in COLLAGE_BOXES][:len(images)])
    boxes = []
    if not isinstance(raw_boxes, list) or len(raw_boxes) != len(images):
        check.add(f"{where}.boxes", f"expected one box per image ({len(images)}), got {raw_boxes!r}")
    else:
        boxes = [_parse_box(check, box, f"{where}.boxes[{i}]") for i, box in enumerate(raw_boxes)]
    size = value.get("size", COLLAGE_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or not COLLAGE_SIZES[0] <= size <= COLLAGE_SIZES[1]:
        check.add(f"{where}.size", f"expected an integer from {COLLAGE_SIZES[0]} to {COLLAGE_SIZES[1]} (pixels), got {size!r}")
        return None
    if images and len(images) != n_subjects:
        check.add(f"{where}.images", f"expected one image per subject ({n_subjects}), got {len(images)}")
    if not images or any(box is None for box in boxes) or len(boxes) != len(images):
        return None
    return Collage(images=tuple(images), boxes=tuple(b for b in boxes if b is not None), size=size)


def _parse_question(check: _Checker, q: Any, where: str, relations: Mapping[str, str], source: str) -> SetQuestion | None:
    if not isinstance(q, dict):
        check.add(where, f"expected a mapping with ask and label, got {q!r}")
        return None
    before = len(check.problems)
    known = {"ask", "relation", "subject", "options", "label", "group", "label_source"}
    for key in sorted(set(q) - known, key=str):
        check.add(f"{where}.{key}", f"unknown key; expected {', '.join(sorted(known))}")
    ask = q.get("ask")
    if ask not in ASK_KINDS:
        check.add(f"{where}.ask", f"expected one of {', '.join(ASK_KINDS)}, got {ask!r}")
        return None
    group = check.string(q, "group", where, required=False) or ask
    label_source = check.string(q, "label_source", where, required=False) or source

    def relation_id(value: Any, field: str) -> str | None:
        if not isinstance(value, str) or value not in relations:
            check.add(f"{where}.{field}", f"expected a relation id of the set's relations ({', '.join(relations) or 'none'}), got {value!r}")
            return None
        return value

    if ask == "choice":
        if "label" in q:
            check.add(f"{where}.label", "a choice question takes no label: its relation is the right option")
        relation = relation_id(q.get("relation"), "relation")
        raw = q.get("options")
        options: list[str] = []
        if not isinstance(raw, list) or len(raw) < 2 or len(set(map(str, raw))) != len(raw):
            check.add(f"{where}.options", f"expected at least 2 different relation ids, got {raw!r}")
        else:
            options = [rid for i, value in enumerate(raw) if (rid := relation_id(value, f"options[{i}]")) is not None]
            if relation is not None and relation not in raw:
                check.add(f"{where}.options", f"expected the true relation {relation!r} among the options {raw!r}")
        if len(check.problems) > before:
            return None
        return SetQuestion("choice", None, relation=relation, options=tuple(options), group=group, label_source=label_source)
    label = _label(check, q.get("label"), f"{where}.label")
    if ask == "relation":
        relation = relation_id(q.get("relation"), "relation")
        if len(check.problems) > before:
            return None
        return SetQuestion("relation", label, relation=relation, group=group, label_source=label_source)
    subject = check.string(q, "subject", where)
    if len(check.problems) > before:
        return None
    return SetQuestion("presence", label, subject=subject, group=group, label_source=label_source)


# --------------------------------------------------------------------------------------------
# Images


def item_image(judge_set: JudgeSet, item: SetItem, data_root: Path) -> "Image.Image":
    """The item's image (RGB): its file, or its collage rendered by the reference-collage method."""
    from relbench.data_root import load_image

    spec_dir = judge_set.path.parent if judge_set.path is not None else None
    if item.image is not None:
        return load_image(item.image, data_root, spec_dir)
    assert item.collage is not None  # parse_judge_set guarantees one of the two
    return render_collage(item.collage, item.subjects, [load_image(ref, data_root, spec_dir) for ref in item.collage.images])


def render_collage(collage: Collage, subjects: Sequence[str], references: Sequence["Image.Image"]) -> "Image.Image":
    """Each reference pasted into its box, the reference-collage method's drawing (its defaults)."""
    from relbench.method import GenerationRequest, SubjectInput
    from relbench.methods.reference_collage.method import ReferenceCollage
    from relbench.profiles import RunContext

    request = GenerationRequest(
        case_id="judge-set", prompt="", relation_phrase="", seed=0, width=collage.size, height=collage.size,
        subjects=tuple(SubjectInput(id=f"s{i}", class_noun=noun, images=(image,), box=box)
                       for i, (noun, image, box) in enumerate(zip(subjects, references, collage.boxes))),
    )
    [image] = ReferenceCollage(RunContext(device="cpu")).generate([request])
    return image


# --------------------------------------------------------------------------------------------
# The default set, built from the DreamRelation triplets


def _words(phrase: str) -> set[str]:
    return set(phrase.lower().split())


def absent_classes(subjects: Sequence[str], pool: Sequence[str], k: int, seed: int, key: str) -> list[str]:
    """``k`` classes of ``pool`` that share no word with any of ``subjects`` (seeded by ``key``)."""
    taken = set().union(*(_words(s) for s in subjects)) if subjects else set()
    candidates = sorted({c for c in pool if not (_words(c) & taken)})
    rng = random.Random(f"relbench-judge-set:{seed}:{key}")
    return rng.sample(candidates, min(k, len(candidates)))


def build_triplet_set(data_root: Path, *, relations: Sequence[str] | None = None, phrases: Mapping[str, str] | None = None,
                      absent_per_image: int = 2, seed: int = 0) -> JudgeSet:
    """The default judge set from ``<data_root>/dreamrelation/<relation>/`` (see the module docstring).

    ``relations``: folders to use (default: every folder with a prompts.json whose phrase is known);
    ``phrases``: relation folder -> phrase, added to ``TRIPLET_PHRASES``.
    """
    from relbench.methods.dreamrelation.data import read_relation_dir
    from relbench.metrics.functional.judge import option_order

    root = Path(data_root) / TRIPLETS_FOLDER
    known = {**TRIPLET_PHRASES, **dict(phrases or {})}
    found = sorted(p.name for p in root.iterdir() if (p / "prompts.json").is_file()) if root.is_dir() else []
    names = list(relations) if relations else [name for name in found if name in known]
    if not names:
        raise RelbenchError(
            f"{root}: no DreamRelation relation folder ({', '.join(sorted(known))}) found; run `relbench data download` "
            "or pass --data-root")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise RelbenchError(f"{root}: no phrase known for relation folder(s) {', '.join(unknown)}; expected one of {', '.join(sorted(known))}")
    if len(names) < 2:
        raise RelbenchError(f"{root}: a judge set needs at least two relations (other-relation negatives), found {', '.join(names)}")
    triplets = [t for name in names for t in read_relation_dir(root, name)]
    pool = sorted({entity for t in triplets for entity in t.entities})
    items: list[SetItem] = []
    for t in triplets:
        subjects = tuple(t.entities)
        base = f"{t.relation}-{t.index}"
        folder = f"{TRIPLETS_FOLDER}/{t.relation}/videos/{t.index}"
        questions = [SetQuestion("relation", True, relation=t.relation, group="positive", label_source=CONSTRUCTION)]
        questions += [SetQuestion("relation", False, relation=other, group="other_relation", label_source=CONSTRUCTION)
                      for other in names if other != t.relation]
        questions += [SetQuestion("presence", True, subject=s, group="present", label_source=CONSTRUCTION) for s in subjects]
        questions += [SetQuestion("presence", False, subject=c, group="absent_class", label_source=CONSTRUCTION)
                      for c in absent_classes(subjects, pool, absent_per_image, seed, base)]
        questions.append(SetQuestion("choice", None, relation=t.relation, options=tuple(option_order(names, seed, base)),
                                     group="choice", label_source=CONSTRUCTION))
        items.append(SetItem(id=f"{base}-motion", subjects=subjects, questions=tuple(questions), image=f"{folder}/motion.png"))
        collage = Collage(images=tuple(f"{folder}/concept{j}.png" for j in range(len(subjects))),
                          boxes=COLLAGE_BOXES[:len(subjects)] if len(subjects) <= len(COLLAGE_BOXES) else _row_boxes(len(subjects)))
        collage_questions = [SetQuestion("relation", False, relation=t.relation, group="collage", label_source=CONSTRUCTION)]
        collage_questions += [SetQuestion("presence", True, subject=s, group="collage_present", label_source=CONSTRUCTION) for s in subjects]
        items.append(SetItem(id=f"{base}-collage", subjects=subjects, questions=tuple(collage_questions), collage=collage))
    return with_digest(JudgeSet(
        name="dreamrelation-triplets",
        relations={name: known[name] for name in names},
        items=tuple(items),
        description="DreamRelation training triplets: each motion image with its relation (yes), the other relations (no), "
                    "its subjects (yes), absent subject classes (no), a multiple-choice question; and the reference "
                    "collage of its concept images (relation: no, subjects: yes). Labels by construction.",
    ))


def _row_boxes(n: int) -> tuple[Box, ...]:
    """``n`` side-by-side boxes for more than two subjects."""
    return tuple((i / n, 0.2, (i + 1) / n, 0.85) for i in range(n))
