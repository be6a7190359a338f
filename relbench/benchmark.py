"""The benchmark data model: subjects, relations, cases and the benchmark that holds them.

These are plain frozen dataclasses; reading and checking spec files lives in ``relbench.spec``.
Boxes are normalised ``(x0, y0, x1, y1)`` with the origin at the top left, as in DreamRelation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

Box = tuple[float, float, float, float]


class RelationKind(str, Enum):
    INTERACTION = "interaction"  # both subjects act together: hug, shake hands, dance
    SPATIAL = "spatial"  # a placement: on top of, next to, behind
    ACTION = "action"  # one subject acts on the other: carry, ride, chase


@dataclass(frozen=True)
class Subject:
    id: str
    class_noun: str  # the word prompts use for it: "dog", "stuffed animal"
    category: str  # what relations match against: "animal", "plush", "object", ...
    images: tuple[str, ...]  # image references (see relbench.data_root)
    masks: tuple[str, ...] = ()  # optional, one per image when given


@dataclass(frozen=True)
class ReferencePose:
    """One example of the relation performed: keypoints of each instance in an image."""

    keypoints: str  # tensor file (N instances, K keypoints, 2) in normalised (x, y)
    skeleton: str  # keypoint order, e.g. "ap10k" or "coco"
    image: str | None = None
    masks: tuple[str, ...] = ()  # one per instance, to associate instances with subjects


@dataclass(frozen=True)
class Relation:
    id: str
    phrase: str  # the verb phrase as it reads in a prompt: "hugging", "shaking hands with"
    kind: RelationKind
    fits: tuple[tuple[str, ...], ...]  # per role (subject position), the categories it accepts
    reference_poses: tuple[ReferencePose, ...] = ()

    @property
    def arity(self) -> int:
        return len(self.fits)


@dataclass(frozen=True)
class Case:
    id: str
    subjects: tuple[str, ...]  # subject ids, in the order the relation's roles take them
    relation: str  # relation id
    prompt: str
    boxes: tuple[Box, ...]  # one normalised layout box per subject


@dataclass(frozen=True)
class Benchmark:
    name: str
    version: str
    description: str
    subjects: dict[str, Subject]
    relations: dict[str, Relation]
    cases: tuple[Case, ...]
    spec_path: Path | None = field(default=None, compare=False)

    @property
    def spec_dir(self) -> Path | None:
        return self.spec_path.parent if self.spec_path else None

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise KeyError(case_id)

