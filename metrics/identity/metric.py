"""Per-subject identity, presence and confusion metrics (definitions: docs/metrics.md).

One ``IdentityAnalyzer`` per run context and settings does the work for all six metrics: it
detects each subject by its class noun (``OpenVocabularyDetector``), assigns boxes to subjects,
crops, embeds crops and references with CLIP and DINO (the context's shared embedders, the ones
clip_t / clip_i / dino load, with their reference-embedding caches), and computes the similarity
matrices. The runner builds each metric from the same context and scores the same batch with each
in turn, so the analysis is cached per image and the metrics only read their part of it.

Metrics (all per generated image):

* ``identity_clip`` / ``identity_dino``: mean over the case's subjects of crop-vs-own-references
  similarity (x100 cosine); a missing subject counts 0.
* ``presence``: fraction of subjects the detector found (score >= threshold).
* ``confusion``: mean over present subjects of how much more the crop resembles another subject's
  references than its own (x100 cosine points, 0 = none).
* ``swap`` / ``blend``: 1 when the case is swapped / blended, else 0 (the mean over images is the rate).
"""

from __future__ import annotations

import weakref
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from relbench.errors import RelbenchError
from relbench.metrics.base import Metric, MetricResult, ScoringSample
from relbench.metrics.clip import CLIPEmbedder, shared_clip_embedder
from relbench.metrics.embedder import check_precision, default_precision
from relbench.metrics.embedding_cache import image_digest
from relbench.metrics.functional.identity import Confusion
from relbench.metrics.functional.similarity import SCALE
from relbench.metrics.identity.detector import DEFAULT_QUERY_TEMPLATE, Detections, OpenVocabularyDetector
from relbench.metrics.identity_meta import BLEND, CONFUSION, IDENTITY_CLIP, IDENTITY_DINO, PRESENCE, SWAP
from relbench.profiles import RunContext

if TYPE_CHECKING:
    import torch
    from PIL import Image

SPACES = ("clip", "dino")
# Analyses kept per analyser (each a few kB): enough for every metric of a batch to find its image.
_CACHE_SIZE = 4096


@dataclass(frozen=True)
class IdentitySettings:
    # Detector score (sigmoid, 0..1) from which a box counts as the subject; 0.1 is transformers'
    # post-processing default for OWLv2 / OWL-ViT.
    threshold: float = 0.1
    # Text query per subject; {noun} is the subject's class noun.
    query_template: str = DEFAULT_QUERY_TEMPLATE
    # Candidate boxes per query before NMS, and the NMS IoU.
    top_k: int = 10
    nms_iou: float = 0.5
    # Embedding space that reassigns crops among subjects sharing a noun and decides swap / blend.
    # DINO by default: it separates instances of one class better than CLIP (DreamBench's argument).
    space: str = "dino"
    # x100-cosine points by which another subject must beat a crop's own to count as its best match.
    margin: float = 0.0
    # DINO pooling, as for the ``dino`` metric.
    dino_pooling: str = "cls"
    # Precision of the detector and embedders (``relbench.metrics.embedder.PRECISIONS``);
    # the metrics pass the run's (--embedder-dtype, else $RELBENCH_EMBEDDER_DTYPE, else float32).
    dtype: str = field(default_factory=default_precision)

    def check(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise RelbenchError(f"identity.threshold: expected a detector score in [0, 1], got {self.threshold}")
        if self.space not in SPACES:
            raise RelbenchError(f"identity.space: unknown space {self.space!r}; expected one of {', '.join(SPACES)}")
        if self.margin < 0:
            raise RelbenchError(f"identity.margin: expected >= 0 (x100 cosine points), got {self.margin}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise RelbenchError(f"identity.nms_iou: expected an IoU in (0, 1], got {self.nms_iou}")
        check_precision(self.dtype, "identity.dtype")


@dataclass(frozen=True)
class CaseAnalysis:
    """Everything the identity metrics report about one generated image."""

    subject_ids: tuple[str, ...]
    present: tuple[bool, ...]
    boxes: tuple[tuple[float, float, float, float] | None, ...]  # pixel xyxy of each subject's crop
    scores: tuple[float | None, ...]  # detector score of that box for the subject's noun
    best_scores: tuple[float, ...]  # highest score for the subject's noun anywhere in the image
    layout_iou: tuple[float | None, ...]  # IoU of the crop's box with the case's layout box, if both exist
    similarity: dict[str, np.ndarray]  # space -> S (N, N), rows crops, columns subjects' references
    identity: dict[str, np.ndarray]  # space -> (N,) own-reference similarity, 0 when missing
    confusion: dict[str, Confusion]  # space -> swap / blend analysis


class IdentityAnalyzer:
    """Detect, assign, crop, embed and compare; results cached per image."""

    def __init__(
        self,
        context: RunContext,
        settings: IdentitySettings | None = None,
        *,
        detector: Any = None,
        clip: CLIPEmbedder | None = None,
        dino: Any = None,
    ):
        """``detector``: an object with ``detect``/``settings`` (e.g. ``OpenVocabularyDetector``) or a
        built ``(model, processor)``; ``clip``: a ``CLIPEmbedder``; ``dino``: a ``DINOEmbedder``, a
        ``DINOScore`` (its embedder is used) or a built ``(ViTModel, image_processor)``. Left out,
        CLIP and DINO are the context's shared embedders and the detector is loaded."""
        from relbench.metrics.dino import DINOEmbedder, shared_dino_embedder

        self.config = settings or IdentitySettings(dtype=default_precision(context))
        self.config.check()
        self.profile = context.profile
        if detector is None or not hasattr(detector, "detect"):
            detector = OpenVocabularyDetector(
                context, detector, query_template=self.config.query_template, top_k=self.config.top_k,
                nms_iou=self.config.nms_iou, dtype=self.config.dtype,
            )
        self.detector = detector
        self.clip = clip or shared_clip_embedder(context, self.config.dtype)
        if dino is None:
            dino = shared_dino_embedder(context, self.config.dino_pooling, self.config.dtype)
        elif isinstance(dino, (tuple, list)):
            dino = DINOEmbedder(context, dino, pooling=self.config.dino_pooling, dtype=self.config.dtype)
        else:
            dino = getattr(dino, "embedder", dino).with_pooling(self.config.dino_pooling)
        self.dino: DINOEmbedder = dino
        self._embed: dict[str, Callable[[Sequence["Image.Image"]], "torch.Tensor"]] = {
            "clip": self.clip.embed_images, "dino": self.dino.embed_images,
        }
        # Reference images go through each embedder's cache (memory and disk), shared with clip_i / dino.
        self._embed_cached: dict[str, Callable[[Sequence["Image.Image"], Sequence[str]], "torch.Tensor"]] = {
            "clip": self.clip.references, "dino": self.dino.references,
        }
        self._cases: OrderedDict[tuple[Any, ...], CaseAnalysis] = OrderedDict()

    # ----------------------------------------------------------------------------------------

    def analyze(self, samples: Sequence[ScoringSample]) -> list[CaseAnalysis]:
        keys, ref_digests = [], []
        for sample in samples:
            _check(sample)
            digests = tuple(tuple(image_digest(image) for image in refs) for refs in sample.references)
            ref_digests.append(digests)
            keys.append((image_digest(sample.image), sample.subject_ids, sample.subject_nouns, digests, tuple(sample.boxes)))
        todo: dict[tuple[Any, ...], int] = {}
        for k, key in enumerate(keys):
            if key not in self._cases and key not in todo:
                todo[key] = k
        if todo:
            order = list(todo.values())
            new = self._analyze([samples[k] for k in order], [ref_digests[k] for k in order])
            for key, analysis in zip(todo, new):
                self._cases[key] = analysis
        results = []
        for key in keys:
            self._cases.move_to_end(key)
            results.append(self._cases[key])
        while len(self._cases) > _CACHE_SIZE:
            self._cases.popitem(last=False)
        return results

    def _analyze(self, samples: list[ScoringSample], ref_digests: list[tuple[tuple[str, ...], ...]]) -> list[CaseAnalysis]:
        from relbench.metrics.functional.identity import assign_by_detector, crop_bounds

        detections: list[Detections] = self.detector.detect([s.image for s in samples], [s.subject_nouns for s in samples])
        assignments = [assign_by_detector(d.scores, self.config.threshold) for d in detections]

        # Every crop of the batch, embedded once per space.
        crops: list["Image.Image"] = []
        crop_row: dict[tuple[int, int], int] = {}
        for t, (sample, det, assigned) in enumerate(zip(samples, detections, assignments)):
            for i, candidate in enumerate(assigned):
                if candidate is not None:
                    crop_row[(t, i)] = len(crops)
                    crops.append(sample.image.crop(crop_bounds(det.boxes[candidate], sample.image.width, sample.image.height)))
        crop_embeds = {space: self._embed[space](crops) for space in SPACES}
        references = self._embed_references(samples, ref_digests)

        return [
            self._case(t, sample, digests, det, assigned, crop_row, crop_embeds, references)
            for t, (sample, digests, det, assigned) in enumerate(zip(samples, ref_digests, detections, assignments))
        ]

    def _embed_references(
        self, samples: list[ScoringSample], ref_digests: list[tuple[tuple[str, ...], ...]],
    ) -> dict[str, dict[str, "torch.Tensor"]]:
        """Space -> digest -> embedding of every distinct reference image of the batch."""
        unique: dict[str, "Image.Image"] = {}
        for sample, digests in zip(samples, ref_digests):
            for refs, subject_digests in zip(sample.references, digests):
                for image, digest in zip(refs, subject_digests):
                    unique.setdefault(digest, image)
        images, digests = list(unique.values()), list(unique)
        return {space: dict(zip(digests, self._embed_cached[space](images, digests))) for space in SPACES}

    def _case(
        self, t: int, sample: ScoringSample, digests: tuple[tuple[str, ...], ...], det: Detections,
        assigned: list[int | None], crop_row: dict[tuple[int, int], int], crop_embeds: dict[str, "torch.Tensor"],
        references: dict[str, dict[str, "torch.Tensor"]],
    ) -> CaseAnalysis:
        import torch

        from relbench.metrics.functional.identity import (
            box_iou,
            confusion,
            identity_scores,
            noun_groups,
            refine_within_noun_groups,
            subject_similarity,
        )

        present = [candidate is not None for candidate in assigned]
        similarity: dict[str, np.ndarray] = {}
        for space in SPACES:
            rows = [crop_embeds[space][crop_row[(t, i)]] if present[i] else None for i in range(len(assigned))]
            refs = [torch.stack([references[space][d] for d in subject_digests]) for subject_digests in digests]
            similarity[space] = subject_similarity(rows, refs)
        # Subjects with the same noun: the detector's choice between their boxes is arbitrary;
        # give each the crop that resembles it most (in the decisive space).
        perm = refine_within_noun_groups(similarity[self.config.space], present, noun_groups(sample.subject_nouns))
        similarity = {space: s[perm] for space, s in similarity.items()}
        candidates = [assigned[perm[i]] for i in range(len(assigned))]
        width, height = sample.image.size
        layout_iou = [None] * len(candidates) if len(sample.boxes) != len(candidates) else [
            None if c is None else box_iou(det.boxes[c] / np.array([width, height, width, height]), layout)
            for c, layout in zip(candidates, sample.boxes)
        ]
        return CaseAnalysis(
            subject_ids=sample.subject_ids,
            present=tuple(present),
            boxes=tuple(None if c is None else tuple(round(float(v), 2) for v in det.boxes[c]) for c in candidates),  # type: ignore[misc]
            scores=tuple(None if c is None else float(det.scores[c, i]) for i, c in enumerate(candidates)),
            best_scores=tuple(float(v) for v in det.best),
            layout_iou=tuple(layout_iou),
            similarity=similarity,
            identity={space: identity_scores(s, present) for space, s in similarity.items()},
            confusion={space: confusion(s, present, self.config.margin) for space, s in similarity.items()},
        )

    # ----------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        dino = {**self.dino.settings(), "scale": SCALE, "clamp": None}
        return {
            "profile": self.profile,
            "detector": self.detector.settings(),
            "threshold": self.config.threshold,
            "assignment": "linear_sum_assignment on detector scores: most subjects with score >= threshold, "
                          "then highest total score; one box per subject",
            "same_noun_subjects": f"crops reassigned among them by {self.config.space} similarity",
            "crop": "the detector box (floor/ceil pixel bounds, no padding), then each embedder's preprocessing",
            "clip": self.clip.settings(),
            "dino": dino,
            "space": self.config.space,
            "margin": self.config.margin,
            "missing_subject": "identity 0 (zero embedding); not counted in confusion",
            "scale": SCALE,
            "clamp": None,
        }


def _check(sample: ScoringSample) -> None:
    if len(sample.subject_ids) != len(sample.references) or len(sample.subject_ids) != len(sample.subject_nouns):
        raise RelbenchError(
            f"case {sample.case_id}: {len(sample.subject_ids)} subject ids, {len(sample.subject_nouns)} nouns "
            f"and {len(sample.references)} reference image sets; expected one of each per subject"
        )
    if len(set(sample.subject_ids)) != len(sample.subject_ids):
        raise RelbenchError(f"case {sample.case_id}: a subject appears twice in {list(sample.subject_ids)}; identity metrics need distinct subjects")
    for sid, noun, refs in zip(sample.subject_ids, sample.subject_nouns, sample.references):
        if not refs:
            raise RelbenchError(f"case {sample.case_id}: subject {sid!r} has no reference images")
        if not noun.strip():
            raise RelbenchError(f"case {sample.case_id}: subject {sid!r} has an empty class noun; the detector needs one")


# One analyser per run context and settings, so that the six metrics the runner builds from one
# context share the detector, the embedders and the per-image analysis. Entries go with the context.
_SHARED_ANALYZERS: dict[int, dict[IdentitySettings, IdentityAnalyzer]] = {}


def shared_analyzer(context: RunContext, settings: IdentitySettings | None = None) -> IdentityAnalyzer:
    settings = settings or IdentitySettings(dtype=default_precision(context))
    per_context = _SHARED_ANALYZERS.get(id(context))
    if per_context is None:
        per_context = _SHARED_ANALYZERS[id(context)] = {}
        weakref.finalize(context, _SHARED_ANALYZERS.pop, id(context), None)
    if settings not in per_context:
        per_context[settings] = IdentityAnalyzer(context, settings)
    return per_context[settings]


# --------------------------------------------------------------------------------------------
# Metrics


class _IdentityMetric(Metric):
    aggregation: ClassVar[str] = ""

    def __init__(self, context: RunContext, *, analyzer: IdentityAnalyzer | None = None, **settings: Any):
        """``settings``: fields of ``IdentitySettings``; ``analyzer``: one to share (tests, notebooks)."""
        super().__init__(context)
        self.analyzer = analyzer or shared_analyzer(context, IdentitySettings(**{"dtype": default_precision(context), **settings}))

    def score(self, samples: Sequence[ScoringSample]) -> list[MetricResult]:
        return [self.result(analysis) for analysis in self.analyzer.analyze(samples)]

    @abstractmethod
    def result(self, analysis: CaseAnalysis) -> MetricResult:
        """This metric's value and details from the shared analysis."""

    def settings(self) -> dict[str, Any]:
        return {"metric": self.name, **self.analyzer.settings(), "aggregation": self.aggregation}


class _IdentityInSpace(_IdentityMetric):
    space: ClassVar[str]
    aggregation: ClassVar[str] = "per subject: its crop vs the mean over its references (0 when missing); mean over subjects"

    def result(self, analysis: CaseAnalysis) -> MetricResult:
        values = analysis.identity[self.space]
        per_subject = {sid: float(v) for sid, v in zip(analysis.subject_ids, values)}
        return MetricResult(value=float(np.mean(values)), details=per_subject)


class IdentityCLIPScore(_IdentityInSpace):
    info = IDENTITY_CLIP
    space: ClassVar[str] = "clip"


class IdentityDINOScore(_IdentityInSpace):
    info = IDENTITY_DINO
    space: ClassVar[str] = "dino"


class PresenceScore(_IdentityMetric):
    info = PRESENCE
    aggregation: ClassVar[str] = "fraction of subjects with a box of score >= threshold"

    def result(self, analysis: CaseAnalysis) -> MetricResult:
        from relbench.metrics.functional.identity import presence_fraction

        subjects = {
            sid: {"present": present, "score": score, "best_score": best, "box": list(box) if box else None, "layout_iou": iou}
            for sid, present, score, best, box, iou in zip(analysis.subject_ids, analysis.present, analysis.scores,
                                                         analysis.best_scores, analysis.boxes, analysis.layout_iou)
        }
        fraction = presence_fraction(analysis.present)
        # n_missing / presence_fraction: the keys the report's "a subject is missing" filter reads.
        details = {"threshold": self.analyzer.config.threshold, "subjects": subjects,
                   "n_missing": sum(1 for present in analysis.present if not present), "presence_fraction": fraction}
        return MetricResult(value=fraction, details=details)  # type: ignore[arg-type]


def _by_id(ids: Sequence[str], indices: Sequence[int]) -> list[str]:
    return [ids[i] for i in indices]


class ConfusionScore(_IdentityMetric):
    info = CONFUSION  # range (0, 2 x SCALE): a leak is a difference of two x100 cosines
    aggregation: ClassVar[str] = "per present subject max_j max(0, S[i, j] - S[i, i]); mean over present subjects (0 when none)"

    def result(self, analysis: CaseAnalysis) -> MetricResult:
        ids, space = analysis.subject_ids, self.analyzer.config.space
        c = analysis.confusion[space]
        details = {
            "space": space,
            "leak": {ids[i]: {ids[j]: float(c.leak[i, j]) for j in range(len(ids)) if j != i}
                     for i in range(len(ids)) if analysis.present[i]},
            "best_match": {ids[i]: ids[m] for i, m in enumerate(c.best_match) if m is not None},
            "swapped": c.swapped,
            "blended": c.blended,
            "swap_cycles": [_by_id(ids, cycle) for cycle in c.swap_cycles],
            "blend_groups": {ids[j]: _by_id(ids, members) for j, members in c.blend_groups.items()},
            "similarity": {s: {ids[i]: {ids[j]: float(analysis.similarity[s][i, j]) for j in range(len(ids))}
                               for i in range(len(ids)) if analysis.present[i]} for s in SPACES},
            "by_space": {s: {"value": analysis.confusion[s].value, "swapped": analysis.confusion[s].swapped,
                             "blended": analysis.confusion[s].blended} for s in SPACES},
        }
        return MetricResult(value=c.value, details=details)  # type: ignore[arg-type]


class SwapScore(_IdentityMetric):
    info = SWAP
    aggregation: ClassVar[str] = "1 if best_match has a cycle of length >= 2 among present subjects, else 0; mean over images = swap rate"

    def result(self, analysis: CaseAnalysis) -> MetricResult:
        c = analysis.confusion[self.analyzer.config.space]
        cycles = [_by_id(analysis.subject_ids, cycle) for cycle in c.swap_cycles]
        return MetricResult(value=float(c.swapped), details={"space": self.analyzer.config.space, "cycles": cycles})  # type: ignore[dict-item]


class BlendScore(_IdentityMetric):
    info = BLEND
    aggregation: ClassVar[str] = "1 if best_match is not one-to-one over present subjects, else 0; mean over images = blend rate"

    def result(self, analysis: CaseAnalysis) -> MetricResult:
        ids = analysis.subject_ids
        c = analysis.confusion[self.analyzer.config.space]
        groups = {ids[j]: _by_id(ids, members) for j, members in c.blend_groups.items()}
        return MetricResult(value=float(c.blended), details={"space": self.analyzer.config.space, "groups": groups})  # type: ignore[dict-item]
