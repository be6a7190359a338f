"""Per-subject identity, presence and confusion: the pure math (see docs/metrics.md).

Pure functions over numpy arrays and tensors: no models, no state. A case has N subjects; subject
``i`` has a class noun, reference images, and, when the detector found it, one crop of the
generated image. Everything is on the x100 cosine scale of ``relbench.metrics.functional.similarity``.

Conventions that keep every quantity defined when a subject is missing:

* a missing subject's crop is the zero embedding, so its similarity to any reference is 0
  (``F.normalize`` maps a zero vector to zero; the cosine is 0, never NaN): its identity is 0;
* confusion is measured over the present subjects only (a crop that does not exist cannot be
  confused); a missing subject's references still count as a possible source of confusion for the
  crops that do exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from relbench.metrics.functional.similarity import image_image_similarity

# Cost of a forbidden (below-threshold) pair in the detector assignment: larger than any sum of
# N <= 1000 scores in [0, 1], so the solver first maximises how many subjects get a box.
_FORBIDDEN = 1e6


# --------------------------------------------------------------------------------------------
# Boxes


def owl_boxes_to_pixels(pred_boxes: torch.Tensor, width: int, height: int, padded: bool = True) -> torch.Tensor:
    """OWL-ViT / OWLv2 boxes -> pixel ``(x0, y0, x1, y1)`` in the original image, clipped to it.

    ``pred_boxes`` (P, 4) are ``(cx, cy, w, h)`` in [0, 1] relative to the model's input. OWLv2
    pads the image bottom/right to a square before resizing (``padded``), so one scale
    ``max(width, height)`` serves both axes; OWL-ViT resizes the image itself: x by width, y by height.
    """
    cx, cy, w, h = pred_boxes.float().unbind(-1)
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    scale_x, scale_y = (float(max(width, height)),) * 2 if padded else (float(width), float(height))
    boxes = boxes * torch.tensor([scale_x, scale_y, scale_x, scale_y])
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype)
    return torch.minimum(boxes.clamp(min=0.0), limits)


def crop_bounds(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds covering ``box`` inside the image, at least 1 x 1 pixel."""
    x0 = min(max(int(np.floor(box[0])), 0), width - 1)
    y0 = min(max(int(np.floor(box[1])), 0), height - 1)
    x1 = max(min(int(np.ceil(box[2])), width), x0 + 1)
    y1 = max(min(int(np.ceil(box[3])), height), y0 + 1)
    return x0, y0, x1, y1


def select_candidates(scores: torch.Tensor, boxes: torch.Tensor, top_k: int, iou_threshold: float) -> list[int]:
    """Candidate boxes of one image: per query, class-aware NMS over its ``top_k`` best boxes.

    ``scores`` (P, Q) are the detector's scores of every predicted box for every query, ``boxes``
    (P, 4) pixel xyxy. NMS runs per query so that a box found for one noun never suppresses an
    overlapping box found for another (subjects in a relation overlap: hugging). Returns the
    sorted union of kept box indices; every candidate keeps its scores for all queries.
    """
    from torchvision.ops import nms

    keep: set[int] = set()
    k = min(top_k, scores.shape[0])
    for q in range(scores.shape[1]):
        top = torch.topk(scores[:, q], k).indices
        kept = nms(boxes[top].float(), scores[top, q].float(), iou_threshold)
        keep.update(int(i) for i in top[kept])
    return sorted(keep)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes (0 when either is empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Assignment


def assign_by_detector(scores: np.ndarray, threshold: float) -> list[int | None]:
    """Crops to subjects by detector score: ``scores`` (M candidates, N subjects) -> per subject
    the index of its candidate, or None when it is missing.

    A pair is allowed when its score (the candidate's score for the subject's noun) is at least
    ``threshold``. Among one-to-one matchings of allowed pairs, the solver
    (``scipy.optimize.linear_sum_assignment``) takes one with the most matched subjects, and among
    those the highest total score. Two subjects never share a box, so two subjects with the same
    noun need two boxes.
    """
    from scipy.optimize import linear_sum_assignment

    scores = np.asarray(scores, dtype=np.float64)
    n_subjects = scores.shape[1] if scores.ndim == 2 else 0
    if scores.ndim != 2 or scores.shape[0] == 0 or n_subjects == 0:
        return [None] * n_subjects
    allowed = scores >= threshold
    cost = np.where(allowed, -scores, _FORBIDDEN)
    rows, cols = linear_sum_assignment(cost)
    out: list[int | None] = [None] * n_subjects
    for m, i in zip(rows, cols):
        if allowed[m, i]:
            out[int(i)] = int(m)
    return out


def noun_groups(nouns: Sequence[str]) -> list[list[int]]:
    """Subjects whose nouns are equal (case and surrounding spaces ignored), groups of 2 or more."""
    groups: dict[str, list[int]] = {}
    for i, noun in enumerate(nouns):
        groups.setdefault(noun.strip().lower(), []).append(i)
    return [members for members in groups.values() if len(members) > 1]


def refine_within_noun_groups(similarity: np.ndarray, present: Sequence[bool], groups: Sequence[Sequence[int]]) -> list[int]:
    """Reassign crops among subjects that share a noun, by similarity.

    The detector cannot tell two subjects with the same noun apart, so its choice between their
    boxes is arbitrary. Within each group, the present members' crops are permuted to maximise the
    total similarity (``linear_sum_assignment`` on ``similarity``, rows = crops in their current
    order, columns = subjects). Returns ``perm``: subject ``i`` takes the crop currently at row
    ``perm[i]``; subjects outside groups, and missing ones, keep their own.
    """
    from scipy.optimize import linear_sum_assignment

    perm = list(range(len(present)))
    for group in groups:
        members = [i for i in group if present[i]]
        if len(members) < 2:
            continue
        block = np.asarray(similarity, dtype=np.float64)[np.ix_(members, members)]
        rows, cols = linear_sum_assignment(-block)
        for r, c in zip(rows, cols):
            perm[members[int(c)]] = members[int(r)]
    return perm


# --------------------------------------------------------------------------------------------
# Similarity, identity, presence


def subject_similarity(crop_embeds: Sequence[torch.Tensor | None], ref_embeds: Sequence[torch.Tensor]) -> np.ndarray:
    """``S[i, j]`` = mean over subject j's references of ``100 * cos(crop_i, ref)``; (N, N) float64.

    ``crop_embeds[i]`` is subject i's crop embedding (D,), or None when it is missing: its row is 0
    (the zero-embedding convention). ``ref_embeds[j]`` (R_j >= 1, D).
    """
    n = len(ref_embeds)
    if len(crop_embeds) != n:
        raise ValueError(f"subject_similarity: {len(crop_embeds)} crops for {n} subjects")
    out = np.zeros((n, n), dtype=np.float64)
    for i, crop in enumerate(crop_embeds):
        if crop is None:
            continue
        for j, refs in enumerate(ref_embeds):
            out[i, j] = float(image_image_similarity(crop, refs))
    return out


def identity_scores(similarity: np.ndarray, present: Sequence[bool]) -> np.ndarray:
    """Per subject ``S[i, i]``; 0 for a missing subject (also what its zero row already holds)."""
    diag = np.diag(np.asarray(similarity, dtype=np.float64)).copy()
    diag[~np.asarray(present, dtype=bool)] = 0.0
    return diag


def presence_fraction(present: Sequence[bool]) -> float:
    """Fraction of the case's subjects that the detector found, in [0, 1]."""
    return float(np.mean(np.asarray(present, dtype=np.float64))) if len(present) else 0.0


# --------------------------------------------------------------------------------------------
# Confusion


@dataclass(frozen=True)
class Confusion:
    """Confusion quantities of one case (indices are subject positions)."""

    leak: np.ndarray  # (N, N): max(0, S[i, j] - S[i, i]) for present i, j != i; else 0
    leak_per_subject: list[float | None]  # max_j leak[i, j]; None for a missing subject
    best_match: list[int | None]  # per present subject: whose references its crop resembles most
    swap_cycles: list[list[int]]  # cycles of length >= 2 of best_match among present subjects
    blend_groups: dict[int, list[int]]  # j -> the >= 2 present subjects whose crops j explains best
    value: float  # mean of leak_per_subject over present subjects; 0 when none is present

    @property
    def swapped(self) -> bool:
        return bool(self.swap_cycles)

    @property
    def blended(self) -> bool:
        return bool(self.blend_groups)


def confusion(similarity: np.ndarray, present: Sequence[bool], margin: float = 0.0) -> Confusion:
    """Swap and blend from the crop-to-references similarity matrix ``S`` (N, N).

    * ``leak[i, j] = max(0, S[i, j] - S[i, i])``: how much more crop i resembles subject j's
      references than its own.
    * ``best_match[i]``: ``argmax_j S[i, j]`` when it beats ``S[i, i]`` by more than ``margin``
      (lowest index on ties), else ``i`` itself.
    * swapped: ``best_match`` has a cycle of length >= 2 among present subjects (crop i looks like
      j and crop j like i, or a longer rotation);
    * blended: ``best_match`` is not one-to-one: one subject's references explain two or more crops.
    """
    s = np.asarray(similarity, dtype=np.float64)
    present = [bool(p) for p in present]
    n = len(present)
    if s.shape != (n, n):
        raise ValueError(f"confusion: similarity of shape {s.shape} for {n} subjects")
    leak = np.zeros((n, n), dtype=np.float64)
    leak_per_subject: list[float | None] = [None] * n
    best: list[int | None] = [None] * n
    for i in range(n):
        if not present[i]:
            continue
        for j in range(n):
            if j != i:
                leak[i, j] = max(0.0, s[i, j] - s[i, i])
        leak_per_subject[i] = float(leak[i].max()) if n > 1 else 0.0
        j = int(np.argmax(s[i]))
        best[i] = j if j != i and s[i, j] - s[i, i] > margin else i

    cycles: list[list[int]] = []
    on_cycle: set[int] = set()
    for start in range(n):
        # Follow best_match from `start`; a cycle closes when the walk returns to a node it has
        # visited. Walks stop at missing subjects (no crop, no best match) and at fixed points.
        path: list[int] = []
        node: int | None = start
        while node is not None and present[node] and node not in path and node not in on_cycle:
            path.append(node)
            node = best[node]
        if node is not None and node in path:
            cycle = path[path.index(node):]
            if len(cycle) >= 2:
                cycles.append(cycle)
            on_cycle.update(cycle)

    groups: dict[int, list[int]] = {}
    for i in range(n):
        if best[i] is not None:
            groups.setdefault(best[i], []).append(i)
    blends = {j: members for j, members in sorted(groups.items()) if len(members) >= 2}

    values = [v for v in leak_per_subject if v is not None]
    value = float(np.mean(values)) if values else 0.0
    return Confusion(leak, leak_per_subject, best, cycles, blends, value)
