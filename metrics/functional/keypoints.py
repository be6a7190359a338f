"""Keypoint agreement math: OKS, PCK, similarity alignment, inter-subject placement, association.

Pure functions over numpy arrays (float64): no models, no files. A *configuration* is the poses of
the S subjects of one image, an array (S, K, 2) of (x, y) in one frame; a missing keypoint is NaN.

Definitions (d_i: distance between predicted and reference keypoint i, both in the reference frame)

* OKS (COCO's object keypoint similarity, as ``pycocotools.cocoeval.COCOeval.computeOks``)::

      OKS = sum_i exp(-d_i^2 / (2 * (area + eps) * k_i^2)) * [v_i] / sum_i [v_i],   k_i = 2 * sigma_i

  ``v_i``: keypoint i exists in the reference (and in both skeletons); eps = ``np.spacing(1)`` as in
  pycocotools. A reference keypoint whose prediction is missing (NaN) adds exp(-inf) = 0. ``area``
  (COCO's s^2) is the area w * h of the box around the reference instance's keypoints: COCO uses the
  segmentation area, which keypoint references do not have. Sigmas are those of the reference's
  skeleton (``relbench.keypoints.SKELETONS``).
* PCK@a: the fraction of the ``v_i`` keypoints with d_i <= a * max(w, h) of that same box
  (a = 0.1 by default); a missing prediction is a miss.
* Alignment: one similarity transform (scale s, rotation R, no reflection, translation t) maps the
  predicted configuration onto the reference, fitted by least squares (Umeyama 1991) on every
  keypoint present in both, of all subjects jointly: the poses are compared up to where the camera
  stood and how large the picture is, but the subjects keep their placement relative to each other.
  A mirror image is not a similarity here: left and right matter to a pose.
* Inter-subject term, for each pair of subjects (a, b), in the aligned prediction P and reference T::

      u(X) = (c_b(X) - c_a(X)) / ((r_a(X) + r_b(X)) / 2)
      inter(a, b) = exp(-|u(P) - u(T)|^2 / (2 * kappa^2))

  c: the centroid and r: the radius of gyration (RMS distance to the centroid) of a subject's
  keypoints present in both P and T. u is the offset from a to b in units of the subjects' size, so
  it does not depend on scale or translation; its direction is compared after the joint rotation.
  kappa = 0.5: half a subject size of misplacement gives 0.61, one size 0.14, two sizes 0.0003.
  The term is the mean over pairs; it keeps two well-posed subjects standing apart from scoring as
  "hugging" when the reference shows them overlapping.
* Configuration score: mean over subjects of OKS, times the inter-subject term (S >= 2), in [0, 1].
* Scorable subjects: a subject whose reference instance has fewer than ``MIN_VISIBLE_KEYPOINTS``
  (2) visible keypoints (present and compared), or whose visible keypoints all lie on one point,
  has no size: its OKS area, PCK threshold and radius would be 0 and even a perfect copy would
  score 0. Such a subject is excluded, with its reason, and the configuration is scored over the
  other subjects (alignment, OKS, PCK, inter-subject term); with none left the score is NaN.
* Association: reference instances are given to subjects by mask containment: C[s, n] = fraction of
  instance n's keypoints that fall inside subject s's mask; ``scipy.optimize.linear_sum_assignment``
  maximises the total. The keypoint order of a file is not trusted (in DreamRelation's ``shake``
  examples 0-2 instance 0 is entity 1).
* Skeletons (defined in ``relbench.keypoints``): ``coco`` (17 human keypoints) and ``ap10k`` (17
  animal keypoints). Between the two, the 15 keypoints with the same body part correspond (eyes,
  nose, shoulders, elbows, hips, knees; wrists = front paws, ankles = back paws); COCO's ears and
  AP-10K's neck and root of tail have no counterpart and are left out of every term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from relbench.keypoints import COCO_TO_AP10K, SKELETONS

PCK_ALPHA = 0.1
INTER_KAPPA = 0.5
# A reference instance needs this many visible keypoints to have a size (box, radius) to score against.
MIN_VISIBLE_KEYPOINTS = 2


def _correspondence(source: str, target: str) -> dict[str, str]:
    if source == target:
        return {name: name for name in SKELETONS[source].keypoints}
    if (source, target) == ("coco", "ap10k"):
        return dict(COCO_TO_AP10K)
    if (source, target) == ("ap10k", "coco"):
        return {v: k for k, v in COCO_TO_AP10K.items()}
    raise ValueError(f"no keypoint correspondence from {source!r} to {target!r}")


def convert_skeleton(points: np.ndarray, source: str, target: str) -> np.ndarray:
    """(..., K_source, 2) keypoints in ``source`` order -> (..., K_target, 2) in ``target`` order;
    target keypoints with no counterpart in ``source`` are NaN."""
    points = np.asarray(points, dtype=np.float64)
    src, dst = SKELETONS[source], SKELETONS[target]
    if points.shape[-2] != src.size:
        raise ValueError(f"convert_skeleton: expected {src.size} {source} keypoints, got shape {points.shape}")
    out = np.full(points.shape[:-2] + (dst.size, 2), np.nan)
    index = {name: i for i, name in enumerate(src.keypoints)}
    for s_name, t_name in _correspondence(source, target).items():
        out[..., dst.keypoints.index(t_name), :] = points[..., index[s_name], :]
    return out


def compared_keypoints(source: str, target: str) -> np.ndarray:
    """(K_target,) bool: the ``target`` keypoints that have a counterpart in ``source``."""
    names = set(_correspondence(source, target).values())
    return np.array([name in names for name in SKELETONS[target].keypoints])


def _present(points: np.ndarray) -> np.ndarray:
    return np.isfinite(points).all(axis=-1)


def keypoint_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) around the present keypoints of one instance (K, 2)."""
    present = np.asarray(points, dtype=np.float64)[_present(points)]
    if present.shape[0] == 0:
        raise ValueError("keypoint_box: the instance has no keypoints")
    x0, y0 = present.min(axis=0)
    x1, y1 = present.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def box_area(points: np.ndarray) -> float:
    x0, y0, x1, y1 = keypoint_box(points)
    return (x1 - x0) * (y1 - y0)


def oks(pred: np.ndarray, target: np.ndarray, sigmas: Sequence[float], area: float, visible: np.ndarray | None = None) -> float:
    """COCO OKS of one predicted instance (K, 2) against one reference instance (K, 2).

    ``visible`` (K,) bool selects the reference keypoints that count (default: those present in
    ``target``); NaN predictions count as misses. NaN when no keypoint counts.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    sigmas_ = np.asarray(sigmas, dtype=np.float64)
    if pred.shape != target.shape or pred.shape != (sigmas_.shape[0], 2):
        raise ValueError(f"oks: expected (K, 2) arrays and K sigmas, got {pred.shape}, {target.shape}, {sigmas_.shape}")
    counted = _present(target) if visible is None else np.asarray(visible, dtype=bool) & _present(target)
    if not counted.any():
        return float("nan")
    d2 = ((pred - target) ** 2).sum(axis=-1)
    d2 = np.where(np.isnan(d2), np.inf, d2)  # a missing prediction is infinitely far
    variances = (2.0 * sigmas_) ** 2
    e = d2 / variances / (float(area) + np.spacing(1)) / 2.0
    return float(np.exp(-e[counted]).sum() / counted.sum())


def pck_threshold(target: np.ndarray, alpha: float = PCK_ALPHA) -> float:
    """``alpha * max(w, h)`` of the box around the reference instance's keypoints."""
    x0, y0, x1, y1 = keypoint_box(target)
    return alpha * max(x1 - x0, y1 - y0)


def pck(pred: np.ndarray, target: np.ndarray, threshold: float, visible: np.ndarray | None = None) -> float:
    """Fraction of the counted reference keypoints predicted within ``threshold`` (NaN: a miss)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    counted = _present(target) if visible is None else np.asarray(visible, dtype=bool) & _present(target)
    if not counted.any():
        return float("nan")
    dist = np.sqrt(((pred - target) ** 2).sum(axis=-1))
    hit = np.where(np.isnan(dist), False, dist <= threshold)
    return float(hit[counted].mean())


@dataclass(frozen=True)
class Similarity:
    """x -> scale * R @ x + translation."""

    scale: float
    rotation: np.ndarray  # (2, 2), det +1
    translation: np.ndarray  # (2,)

    @property
    def angle(self) -> float:
        return float(np.arctan2(self.rotation[1, 0], self.rotation[0, 0]))

    def apply(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        return self.scale * points @ self.rotation.T + self.translation


IDENTITY = Similarity(1.0, np.eye(2), np.zeros(2))


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """Least-squares similarity (no reflection) mapping ``src`` (N, 2) onto ``dst`` (N, 2) (Umeyama).

    N = 0 gives the identity; points without spread (N = 1, or all equal) a pure translation.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"fit_similarity: expected two (N, 2) arrays, got {src.shape} and {dst.shape}")
    if src.shape[0] == 0:
        return IDENTITY
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = (src_c**2).sum() / src.shape[0]
    if var_src <= 1e-24:
        return Similarity(1.0, np.eye(2), mu_dst - mu_src)
    cov = dst_c.T @ src_c / src.shape[0]
    u, d, vt = np.linalg.svd(cov)
    # Flip the last axis when the best orthogonal map would be a reflection.
    signs = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = float((d * signs).sum() / var_src)
    return Similarity(scale, rotation, mu_dst - scale * rotation @ mu_src)


def _centroid_and_radius(points: np.ndarray) -> tuple[np.ndarray, float]:
    centroid = points.mean(axis=0)
    return centroid, float(np.sqrt(((points - centroid) ** 2).sum(axis=-1).mean()))


def inter_subject_agreement(pred: np.ndarray, target: np.ndarray, kappa: float = INTER_KAPPA) -> float:
    """Mean over subject pairs of ``exp(-|u(P) - u(T)|^2 / (2 kappa^2))`` (see the module docstring).

    ``pred`` and ``target``: (S, K, 2) configurations in one frame (the prediction aligned). A pair
    where either subject has no keypoint present in both counts 0; NaN for fewer than 2 subjects.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n_subjects = pred.shape[0]
    if n_subjects < 2:
        return float("nan")
    both = _present(pred) & _present(target)
    values = []
    for a in range(n_subjects):
        for b in range(a + 1, n_subjects):
            if not both[a].any() or not both[b].any():
                values.append(0.0)
                continue
            offsets = []
            for config in (pred, target):
                c_a, r_a = _centroid_and_radius(config[a][both[a]])
                c_b, r_b = _centroid_and_radius(config[b][both[b]])
                size = (r_a + r_b) / 2.0
                offsets.append(None if size <= 1e-12 else (c_b - c_a) / size)
            if offsets[0] is None or offsets[1] is None:
                values.append(0.0)
                continue
            diff2 = float(((offsets[0] - offsets[1]) ** 2).sum())
            values.append(float(np.exp(-diff2 / (2.0 * kappa**2))))
    return float(np.mean(values))


def associate_instances(instances: np.ndarray, masks: Sequence[np.ndarray]) -> tuple[int, ...]:
    """For each subject s (one boolean mask (H, W) each), the index of the reference instance it is.

    ``instances``: (N, K, 2) keypoints normalised to [0, 1] in the masks' image, N >= len(masks).
    Each instance goes to at most one subject, maximising the summed containment fractions.
    """
    from scipy.optimize import linear_sum_assignment

    instances = np.asarray(instances, dtype=np.float64)
    if instances.shape[0] < len(masks):
        raise ValueError(f"associate_instances: {instances.shape[0]} instances for {len(masks)} subjects")
    containment = np.zeros((len(masks), instances.shape[0]))
    for s, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        height, width = mask.shape
        for n, points in enumerate(instances):
            present = points[_present(points)]
            if present.shape[0] == 0:
                continue
            cols = np.clip((present[:, 0] * width).astype(int), 0, width - 1)
            rows = np.clip((present[:, 1] * height).astype(int), 0, height - 1)
            containment[s, n] = mask[rows, cols].mean()
    rows_, cols_ = linear_sum_assignment(containment, maximize=True)
    return tuple(int(c) for _, c in sorted(zip(rows_, cols_)))


def unscorable_reason(target: np.ndarray, compared: np.ndarray | None = None) -> str | None:
    """Why one reference instance (K, 2) cannot be scored against, or None when it can.

    It needs ``MIN_VISIBLE_KEYPOINTS`` visible keypoints (present, and ``compared`` when given) that
    do not all lie on one point: fewer give a box and a radius of 0, which no prediction can meet.
    """
    target = np.asarray(target, dtype=np.float64)
    visible = _present(target) if compared is None else _present(target) & np.asarray(compared, dtype=bool)
    count = int(visible.sum())
    if count < MIN_VISIBLE_KEYPOINTS:
        noun = "keypoint" if count == 1 else "keypoints"
        return f"{count} visible {noun} in the reference, need >= {MIN_VISIBLE_KEYPOINTS}"
    points = target[visible]
    if np.ptp(points, axis=0).max() <= 0.0:
        return f"its {count} visible keypoints in the reference lie on one point"
    return None


@dataclass(frozen=True)
class ConfigurationScore:
    value: float  # mean OKS x inter-subject term (mean OKS alone for one subject); NaN: no subject scorable
    oks: tuple[float, ...]  # per subject (NaN for an excluded subject)
    pck: tuple[float, ...]  # per subject (NaN for an excluded subject)
    inter_subject: float  # NaN for fewer than 2 scored subjects
    transform: Similarity  # prediction -> reference frame
    excluded: tuple[tuple[int, str], ...] = ()  # (subject index, why) of the subjects not scored

    @property
    def scored(self) -> int:
        """The number of subjects scored."""
        return len(self.oks) - len(self.excluded)


def score_configuration(
    pred: np.ndarray,
    target: np.ndarray,
    sigmas: Sequence[float],
    *,
    compared: np.ndarray | None = None,
    pck_alpha: float = PCK_ALPHA,
    inter_kappa: float = INTER_KAPPA,
) -> ConfigurationScore:
    """Align ``pred`` (S, K, 2) onto ``target`` (S, K, 2) jointly and score it (module docstring).

    Both are in the target's skeleton order, subject s of one being subject s of the other. NaN in
    ``pred`` is a keypoint the estimator did not find (a miss); ``compared`` (K,) bool leaves out
    the keypoints the prediction's skeleton does not have (default: all compared). The reference
    boxes (OKS area, PCK threshold) use every present ``target`` keypoint. Subjects whose reference
    instance is unscorable (``unscorable_reason``) are left out of every term and listed in
    ``excluded``.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"score_configuration: expected two (S, K, 2) arrays, got {pred.shape} and {target.shape}")
    compared_ = np.ones(pred.shape[1], dtype=bool) if compared is None else np.asarray(compared, dtype=bool)
    if compared_.shape != (pred.shape[1],):
        raise ValueError(f"score_configuration: expected compared of shape ({pred.shape[1]},), got {compared_.shape}")
    n_subjects = pred.shape[0]
    excluded = tuple((s, reason) for s in range(n_subjects) if (reason := unscorable_reason(target[s], compared_)) is not None)
    kept = [s for s in range(n_subjects) if s not in dict(excluded)]
    oks_values = [math.nan] * n_subjects
    pck_values = [math.nan] * n_subjects
    if not kept:
        return ConfigurationScore(math.nan, tuple(oks_values), tuple(pck_values), math.nan, IDENTITY, excluded)
    pred = np.where(compared_[None, :, None], pred[kept], np.nan)  # never fitted or scored
    target = target[kept]
    both = _present(pred) & _present(target)
    transform = fit_similarity(pred[both], target[both])
    aligned = transform.apply(pred)
    for i, s in enumerate(kept):
        oks_values[s] = oks(aligned[i], target[i], sigmas, box_area(target[i]), visible=compared_)
        pck_values[s] = pck(aligned[i], target[i], pck_threshold(target[i], pck_alpha), visible=compared_)
    inter = inter_subject_agreement(aligned, target, inter_kappa)
    mean_oks = float(np.mean([oks_values[s] for s in kept]))
    value = mean_oks if len(kept) < 2 else mean_oks * inter
    return ConfigurationScore(value, tuple(oks_values), tuple(pck_values), inter, transform, excluded)
