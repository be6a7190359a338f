"""The Metric interface: a stateful wrapper that batches, caches and records its settings.

The math of each metric lives in ``relbench.metrics.functional`` as pure functions over tensors;
the classes here load models (hub id, local path or an already built module), preprocess images,
batch, cache reference embeddings, and say exactly which settings produced each value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from relbench.plugins import MetricInfo, assign_class_attributes

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

    from relbench.benchmark import Benchmark
    from relbench.profiles import RunContext


@dataclass(frozen=True)
class ScoringSample:
    """One generated image with what it was asked to show."""

    case_id: str
    image: "Image.Image"
    prompt: str
    relation_phrase: str
    subject_ids: tuple[str, ...]
    subject_nouns: tuple[str, ...]
    references: tuple[tuple["Image.Image", ...], ...]  # per subject, its reference images
    # Where the case comes from, for metrics that need more than the images: the relation id and
    # kind, the layout boxes (normalised xyxy, one per subject), the subjects' categories, and the
    # benchmark itself (other relations as distractors, reference poses) with the data root that
    # resolves its files. Optional so that a metric can be called on bare images.
    relation_id: str | None = None
    relation_kind: str | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    subject_categories: tuple[str, ...] = ()
    benchmark: "Benchmark | None" = None
    data_root: "Path | None" = None


# A result whose details hold RETRY_KEY (True) failed for a reason that may pass (a judge API
# error, an unparseable answer): its value is NaN, ``details["reason"]`` says why, and a resumed
# run (the same ``relbench evaluate`` command again) scores this metric of the row again.
RETRY_KEY = "retry"


@dataclass(frozen=True)
class MetricResult:
    value: float
    # e.g. per-subject similarity; a NaN value (metric not applicable) carries a "reason" string
    details: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable


class Metric(ABC):
    """Base class of metrics. Subclasses set ``info`` (their ``MetricInfo``, from a torch-free
    module: name, direction, range, model key, profiles and description are assigned from it) and
    implement ``score``."""

    info: ClassVar[MetricInfo]
    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    value_range: ClassVar[tuple[float, float]]
    model_key: ClassVar[str | None]
    profiles: ClassVar[tuple[str, ...]] = ("tiny", "full")
    description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        assign_class_attributes(cls)

    def __init__(self, context: "RunContext"):
        self.context = context

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Model id, revision, pooling, resolution, dtype, scale: all that moves the number."""

    @abstractmethod
    def score(self, samples: Sequence[ScoringSample]) -> list[MetricResult]:
        """One result per sample, in order."""
