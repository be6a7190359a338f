"""``pose``: how well the generated image's poses agree with the relation's reference poses.

For each case: a top-down pose estimator (``relbench.metrics.pose.backends``, ViTPose++ by default)
finds one pose per subject inside the case's layout boxes (one box per subject, in role order; the
layout is what the methods were asked to follow, so the box says which subject is which without a
detector; a detector can come later). The poses are compared with each reference example of the
relation (DreamRelation's motion keypoints; a keypoint the file marks invisible, see
``relbench.keypoints``, is absent from the reference and never scored):

1. the reference's instances are assigned to the case's subjects by mask containment (Hungarian
   assignment; by file order only when the reference pose has no masks, and the settings say so);
2. both configurations go into one frame: normalised coordinates with the image's aspect ratio kept
   (x * W / max(W, H), y * H / max(W, H); a reference without image or masks counts as square);
3. the prediction is converted to the reference's skeleton (COCO <-> AP-10K by body part), aligned
   onto the reference by one similarity transform fitted on both subjects jointly, and scored:
   OKS (the reference skeleton's sigmas), PCK@0.1 and the inter-subject placement term. Every
   formula is in ``relbench.metrics.functional.keypoints``.

Value: mean OKS over subjects x inter-subject term, in [0, 1], for the reference example that gives
the highest value among those that score the most subjects (a relation can be performed in several
valid ways; the others stay in ``details`` as ``ref<i>/...``). A subject whose reference instance has
fewer than 2 visible keypoints (or all on one point) is not scored against that reference: its
reason is in ``details["excluded"]`` (``ref<i>/excluded`` per reference). A case whose relation has
no reference poses, or whose references leave no subject to score (a reference with no keypoints),
gets NaN with ``details["reason"]``; reports skip NaN values when they average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from relbench.errors import RelbenchError
from relbench.keypoints import SKELETONS
from relbench.metrics.base import Metric, MetricResult, ScoringSample
from relbench.metrics.functional.keypoints import (
    INTER_KAPPA,
    MIN_VISIBLE_KEYPOINTS,
    PCK_ALPHA,
    associate_instances,
    compared_keypoints,
    convert_skeleton,
    score_configuration,
)
from relbench.metrics.pose.backends import (
    DEFAULT_BATCH_SIZE,
    VITPOSE_PLUS_DATASETS,
    PoseBackend,
    PoseEstimate,
    build_backend,
)
from relbench.metrics.pose_meta import INFO
from relbench.profiles import RunContext

if TYPE_CHECKING:
    from PIL import Image

    from relbench.benchmark import ReferencePose

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PoseReference:
    """One reference example, loaded: keypoints of each instance and what places them."""

    keypoints: np.ndarray  # (N, K, 2) normalised (x, y) in [0, 1] of the reference image; NaN: not visible
    skeleton: str  # keypoint order: "coco" or "ap10k"
    image_size: tuple[int, int] | None = None  # (width, height) of the reference image; None: square
    masks: tuple[np.ndarray, ...] = ()  # one boolean (H, W) mask per subject, in role order
    source: str = ""  # the keypoints file, for messages


@dataclass(frozen=True)
class PoseInputs:
    """What the pose metric needs beyond ``ScoringSample``'s images (built from the sample's
    benchmark, relation and boxes when not given)."""

    boxes: tuple[Box, ...]  # normalised (x0, y0, x1, y1), one per subject in role order
    references: tuple[PoseReference, ...]  # empty when the relation has no reference poses


# --------------------------------------------------------------------------------------------
# Reference poses


def _open_image(path: Path, what: str) -> "Image.Image":
    """A reference image or mask, through the one opener of spec images (full decode, pixel limit)."""
    from relbench.data_root import open_image

    if not path.is_file():
        raise RelbenchError(f"{path}: {what} not found (run `relbench data download` or pass --data-root)")
    return open_image(path)


def load_reference_poses(poses: Sequence["ReferencePose"], data_root: Path, spec_dir: Path | None) -> tuple[PoseReference, ...]:
    """Read the keypoint files, image sizes and masks of a relation's reference poses; a keypoint
    the file marks invisible (``relbench.keypoints``: (x, y, v) or ``_visibility.pth``) becomes NaN,
    which every term of the score leaves out."""
    from relbench.data_root import resolve_path
    from relbench.keypoints import load_pose

    loaded = []
    for pose in poses:
        path = resolve_path(pose.keypoints, data_root, spec_dir)
        if not path.is_file():
            raise RelbenchError(f"{path}: keypoints file not found (run `relbench data download` or pass --data-root)")
        xy, visible = load_pose(path)
        keypoints = np.where(visible.numpy()[..., None], xy.numpy().astype(np.float64), np.nan)
        if pose.skeleton not in SKELETONS or keypoints.shape[1] != SKELETONS[pose.skeleton].size:
            raise RelbenchError(f"{path}: skeleton {pose.skeleton!r} with {keypoints.shape[1]} keypoints per instance; expected one of "
                                + ", ".join(f"{name} ({s.size})" for name, s in SKELETONS.items()))
        masks = []
        for ref in pose.masks:
            with _open_image(resolve_path(ref, data_root, spec_dir), "mask") as mask:
                masks.append(np.asarray(mask.convert("L")) > 127)
        size = None
        if pose.image:
            with _open_image(resolve_path(pose.image, data_root, spec_dir), "reference image") as image:
                size = image.size
        elif masks:
            size = (masks[0].shape[1], masks[0].shape[0])
        loaded.append(PoseReference(keypoints, pose.skeleton, size, tuple(masks), str(path)))
    return tuple(loaded)


def reference_configuration(reference: PoseReference, n_subjects: int, case_id: str) -> np.ndarray:
    """(S, K, 2): the reference's instances in subject order, in the aspect-kept frame."""
    instances = reference.keypoints
    if instances.shape[0] == 0:  # a reference with no keypoints: every subject is excluded when scored
        return np.full((n_subjects, instances.shape[1], 2), np.nan)
    if instances.shape[0] < n_subjects:
        raise RelbenchError(f"{reference.source}: {instances.shape[0]} instances for the {n_subjects} subjects of case {case_id}")
    if reference.masks:
        if len(reference.masks) != n_subjects:
            raise RelbenchError(
                f"{reference.source}: {len(reference.masks)} masks for the {n_subjects} subjects of case {case_id}; "
                "expected one per subject"
            )
        order = associate_instances(instances, reference.masks)
    else:
        order = tuple(range(n_subjects))
    width, height = reference.image_size or (1, 1)
    return instances[list(order)] * (np.array([width, height], dtype=np.float64) / max(width, height))


# --------------------------------------------------------------------------------------------
# The metric


class PoseScore(Metric):
    info = INFO

    def __init__(
        self,
        context: RunContext,
        model: Any = None,
        *,
        backend: str = "vitpose",
        dataset_index: int | None = None,
        dtype: str = "float32",
        batch_size: int = DEFAULT_BATCH_SIZE,
        pck_alpha: float = PCK_ALPHA,
        inter_kappa: float = INTER_KAPPA,
        mmpose_checkpoint: str | None = None,
    ):
        """``model``: a built ``PoseBackend``, a built (ViTPose model, processor) pair, or None to
        load the context's ``pose`` model. ``dataset_index`` fixes ViTPose++'s experts; by default
        they follow each reference's skeleton (coco -> 0, ap10k -> 3)."""
        super().__init__(context)
        if isinstance(model, PoseBackend):
            self.backend = model
        else:
            self.backend = build_backend(backend, context, model, dtype=dtype, batch_size=batch_size,
                                         mmpose_checkpoint=mmpose_checkpoint)
        self.fixed_dataset_index = dataset_index
        self.pck_alpha = pck_alpha
        self.inter_kappa = inter_kappa
        # Keyed by the relation's reference poses (frozen, hashable) and where their files are.
        self._reference_cache: dict[tuple[Any, str, str], tuple[PoseReference, ...]] = {}

    def dataset_index_for(self, skeleton: str) -> int | None:
        if not self.backend.uses_dataset_index:
            return None
        if self.fixed_dataset_index is not None:
            return self.fixed_dataset_index
        return VITPOSE_PLUS_DATASETS[skeleton]

    def settings(self) -> dict[str, Any]:
        if not self.backend.uses_dataset_index:
            dataset_index: Any = None
        elif self.fixed_dataset_index is not None:
            dataset_index = self.fixed_dataset_index
        else:
            dataset_index = {name: VITPOSE_PLUS_DATASETS[name] for name in SKELETONS}
        return {
            "metric": self.name,
            "profile": self.context.profile,
            **self.backend.settings(),
            "dataset_index": dataset_index,
            "sigmas": {name: list(skeleton.sigmas) for name, skeleton in SKELETONS.items()},
            "skeleton_correspondence": "coco<->ap10k by body part (wrist = front paw, ankle = back paw); "
                                       "coco ears, ap10k neck and root of tail not compared",
            "boxes": "the case's layout boxes, one per subject in role order (no detector)",
            "association": "reference instances -> subjects by mask containment (linear_sum_assignment); "
                           "by file order when a reference pose has no masks",
            "alignment": "one similarity (scale, rotation, translation; no reflection) fitted on both subjects' "
                         "keypoints jointly, prediction -> reference",
            "oks_area": "w*h of the box around the reference instance's keypoints",
            "pck_alpha": self.pck_alpha,
            "pck_threshold": f"{self.pck_alpha} x max(w, h) of that box",
            "inter_kappa": self.inter_kappa,
            "value": "mean OKS over subjects x inter-subject term; best over the relation's reference examples "
                     "that score the most subjects",
            "min_visible_keypoints": f"a subject with fewer than {MIN_VISIBLE_KEYPOINTS} visible reference keypoints "
                                     "(or all on one point) is excluded, reason in details.excluded",
            "no_reference_poses": "NaN with details.reason (also when no subject is scorable)",
        }

    # ----------------------------------------------------------------------------------------

    def inputs_for(self, sample: ScoringSample) -> PoseInputs:
        """The sample's boxes and its relation's reference poses (loaded once per relation)."""
        if sample.benchmark is None or sample.relation_id is None:
            raise RelbenchError(f"pose: case {sample.case_id}: the sample names no benchmark relation; pass PoseInputs")
        relation = sample.benchmark.relations.get(sample.relation_id)
        if relation is None:
            raise RelbenchError(f"pose: case {sample.case_id}: unknown relation {sample.relation_id!r}")
        if sample.data_root is None:
            from relbench.data_root import resolve_data_root

            data_root = resolve_data_root()
        else:
            data_root = Path(sample.data_root)
        key = (relation.reference_poses, str(data_root), str(sample.benchmark.spec_dir))
        if key not in self._reference_cache:
            self._reference_cache[key] = load_reference_poses(relation.reference_poses, data_root, sample.benchmark.spec_dir)
        return PoseInputs(tuple(sample.boxes), self._reference_cache[key])

    def score(self, samples: Sequence[ScoringSample], inputs: Sequence[PoseInputs] | None = None) -> list[MetricResult]:
        """One result per sample; ``inputs`` (one per sample) replace what the samples carry."""
        if inputs is None:
            inputs = [self.inputs_for(sample) for sample in samples]
        if len(inputs) != len(samples):
            raise ValueError(f"pose: {len(samples)} samples but {len(inputs)} inputs")
        for sample, given in zip(samples, inputs):
            if given.references and len(given.boxes) != len(sample.subject_ids):
                raise RelbenchError(
                    f"case {sample.case_id}: {len(given.boxes)} layout boxes for {len(sample.subject_ids)} subjects; "
                    "the pose metric needs one box per subject"
                )

        # One estimator pass per ViTPose++ expert set that the samples' references need.
        wanted: dict[int | None, list[int]] = {}
        for i, given in enumerate(inputs):
            for index in dict.fromkeys(self.dataset_index_for(ref.skeleton) for ref in given.references):
                wanted.setdefault(index, []).append(i)
        estimates: dict[tuple[int, int | None], PoseEstimate] = {}
        for index, members in wanted.items():
            images = [samples[i].image for i in members]
            boxes = [_pixel_boxes(inputs[i].boxes, samples[i].image.size) for i in members]
            for i, estimate in zip(members, self.backend.estimate(images, boxes, dataset_index=index)):
                estimates[(i, index)] = estimate

        results = []
        for i, (sample, given) in enumerate(zip(samples, inputs)):
            if not given.references:
                reason = f"relation {sample.relation_id!r} has no reference poses" if sample.relation_id else "no reference poses"
                results.append(MetricResult(value=math.nan, details={"reason": reason}))  # type: ignore[dict-item]
                continue
            mine = {index: estimate for (j, index), estimate in estimates.items() if j == i}
            results.append(self._score_sample(sample, given, mine))
        return results

    def _score_sample(self, sample: ScoringSample, given: PoseInputs, estimates: dict[int | None, PoseEstimate]) -> MetricResult:
        labels = _subject_labels(sample.subject_ids)
        n_subjects = len(labels)
        scale = 1.0 / max(sample.image.size)
        details: dict[str, Any] = {}
        per_reference = []
        for r, reference in enumerate(given.references):
            index = self.dataset_index_for(reference.skeleton)
            target = reference_configuration(reference, n_subjects, sample.case_id)
            pred = convert_skeleton(estimates[index].keypoints * scale, self.backend.skeleton, reference.skeleton)
            result = score_configuration(
                pred, target, SKELETONS[reference.skeleton].sigmas,
                compared=compared_keypoints(self.backend.skeleton, reference.skeleton),
                pck_alpha=self.pck_alpha, inter_kappa=self.inter_kappa,
            )
            per_reference.append((result, index))
            details[f"ref{r}/value"] = result.value
            details[f"ref{r}/oks"] = _nanmean(result.oks)
            details[f"ref{r}/pck"] = _nanmean(result.pck)
            details[f"ref{r}/inter_subject"] = result.inter_subject
            if result.excluded:
                details[f"ref{r}/excluded"] = [f"subject {labels[s]}: {why}" for s, why in result.excluded]
        scorable = [r for r, (result, _) in enumerate(per_reference) if result.scored > 0]
        if not scorable:
            reasons = "; ".join(f"ref{r} ({reference.source or 'given'}) " + ", ".join(details[f"ref{r}/excluded"])
                                for r, reference in enumerate(given.references))
            details["reason"] = f"no subject can be scored against the reference poses: {reasons}"
            return MetricResult(value=math.nan, details=details)
        # The best reference example among those that score the most subjects (a reference that
        # leaves a subject out must not win by dropping it); max keeps the first of equal keys.
        best = max(scorable, key=lambda r: (per_reference[r][0].scored, per_reference[r][0].value))
        chosen, index = per_reference[best]
        details.update({"reference": float(best), "oks": _nanmean(chosen.oks), "pck": _nanmean(chosen.pck),
                        "inter_subject": chosen.inter_subject})
        if chosen.excluded:
            details["excluded"] = details[f"ref{best}/excluded"]
        if index is not None:
            details["dataset_index"] = float(index)
        for s, label in enumerate(labels):
            if not math.isnan(chosen.oks[s]):  # an excluded subject has no OKS or PCK
                details[f"oks/{label}"] = chosen.oks[s]
                details[f"pck/{label}"] = chosen.pck[s]
            details[f"keypoint_score/{label}"] = float(estimates[index].scores[s].mean())
        return MetricResult(value=chosen.value, details=details)


def _nanmean(values: Sequence[float]) -> float:
    """Mean over the scored subjects (excluded ones are NaN); NaN when none is scored."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _pixel_boxes(boxes: Sequence[Box], size: tuple[int, int]) -> np.ndarray:
    """Normalised (x0, y0, x1, y1) -> COCO (x, y, w, h) pixels of an image of ``size`` (W, H)."""
    width, height = size
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([width, height, width, height])
    out[:, 2:] -= out[:, :2]
    return out


def _subject_labels(subject_ids: Sequence[str]) -> list[str]:
    """Subject ids as detail keys; a repeated id gets its position (``dog#1``)."""
    return [sid if list(subject_ids).count(sid) == 1 else f"{sid}#{i}" for i, sid in enumerate(subject_ids)]
