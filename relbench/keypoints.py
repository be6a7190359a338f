"""Keypoints: the skeletons (names, left/right pairs, OKS sigmas) and reading keypoint files.

Every part of relbench that knows a skeleton takes it from here: the spec checks (keypoints per
instance), DreamRelation's training data (left/right swap of a horizontal flip) and the ``pose``
metric (OKS sigmas, COCO <-> AP-10K correspondence, the estimator's labels).

Keypoint files (DreamRelation's ``*_keyposes.pth``, reference poses of a spec) are torch tensors
of normalised (x, y), in one of two forms:

* (N, K, 2): N instances of K keypoints, optionally with a file beside it named
  ``<stem>_visibility.pth`` (for example ``motion_keyposes_visibility.pth``) holding an (N, K)
  tensor, non-zero meaning visible;
* (N, K, 3): (x, y, v) with v > 0 meaning visible (COCO's convention).

Without either, every keypoint is visible. Visible keypoints must lie in [0, 1]; invisible ones
only need to be finite numbers (COCO writes 0, other tools -1) and are never used. The files are
torch pickles; they are only ever read with ``weights_only=True`` so that a file from the internet
cannot run code. This module imports torch only inside the loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from relbench.errors import RelbenchError

if TYPE_CHECKING:
    import torch

VISIBILITY_SUFFIX = "_visibility.pth"


class KeypointFileError(RelbenchError):
    pass


# --------------------------------------------------------------------------------------------
# Skeletons


@dataclass(frozen=True)
class Skeleton:
    name: str
    keypoints: tuple[str, ...]  # in file order, spelled as normalize_keypoint_name writes them
    # Index pairs (left, right) that swap roles when the image is mirrored.
    flip_pairs: tuple[tuple[int, int], ...]
    # Per-keypoint OKS sigmas (empty for a skeleton that is never scored).
    sigmas: tuple[float, ...] = ()

    @property
    def size(self) -> int:
        return len(self.keypoints)

    def flip_permutation(self) -> list[int]:
        """``new[k] = old[perm[k]]`` after a horizontal flip: left and right exchanged."""
        perm = list(range(len(self.keypoints)))
        for left, right in self.flip_pairs:
            perm[left], perm[right] = right, left
        return perm


# Names in the spelling of transformers' ViTPose configs (COCO) and the AP-10K annotations,
# normalised; sigmas: pycocotools' default kpt_oks_sigmas (COCO) and AP-10K's mmpose dataset config.
COCO = Skeleton(
    "coco",
    ("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
     "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle"),
    ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
     0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089),
)
AP10K = Skeleton(
    "ap10k",
    ("l_eye", "r_eye", "nose", "neck", "root_of_tail", "l_shoulder", "l_elbow", "l_f_paw", "r_shoulder",
     "r_elbow", "r_f_paw", "l_hip", "l_knee", "l_b_paw", "r_hip", "r_knee", "r_b_paw"),
    ((0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16)),
    (0.025, 0.025, 0.026, 0.035, 0.035, 0.079, 0.072, 0.062, 0.079,
     0.072, 0.062, 0.107, 0.087, 0.089, 0.107, 0.087, 0.089),
)
SKELETONS: dict[str, Skeleton] = {s.name: s for s in (COCO, AP10K)}
# COCO keypoint -> the AP-10K keypoint on the same body part (wrist = front paw, ankle = back paw);
# COCO's ears and AP-10K's neck and root of tail have no counterpart.
COCO_TO_AP10K = {
    "nose": "nose", "l_eye": "l_eye", "r_eye": "r_eye", "l_shoulder": "l_shoulder", "r_shoulder": "r_shoulder",
    "l_elbow": "l_elbow", "r_elbow": "r_elbow", "l_wrist": "l_f_paw", "r_wrist": "r_f_paw", "l_hip": "l_hip",
    "r_hip": "r_hip", "l_knee": "l_knee", "r_knee": "r_knee", "l_ankle": "l_b_paw", "r_ankle": "r_b_paw",
}


def get_skeleton(skeleton: str | Skeleton) -> Skeleton:
    if isinstance(skeleton, Skeleton):
        return skeleton
    if skeleton not in SKELETONS:
        raise RelbenchError(f"skeleton: unknown skeleton {skeleton!r}; expected one of {', '.join(SKELETONS)}")
    return SKELETONS[skeleton]


def normalize_keypoint_name(name: str) -> str:
    """``"L_Eye"``, ``"left_eye"``, ``"Root of tail"`` -> ``"l_eye"``, ``"l_eye"``, ``"root_of_tail"``."""
    name = name.strip().lower().replace(" ", "_").replace("-", "_")
    for long, short in (("left_", "l_"), ("right_", "r_")):
        if name.startswith(long):
            name = short + name[len(long):]
    return name


def skeleton_of_labels(labels: Sequence[str]) -> str | None:
    """The known skeleton whose keypoint names are ``labels`` in order, or None."""
    names = tuple(normalize_keypoint_name(label) for label in labels)
    for skeleton in SKELETONS.values():
        if names == skeleton.keypoints:
            return skeleton.name
    return None


# --------------------------------------------------------------------------------------------
# Keypoint files


def visibility_file(path: Path) -> Path:
    """The optional visibility file beside a keypoint file (``<stem>_visibility.pth``)."""
    return path.with_name(f"{path.stem}{VISIBILITY_SUFFIX}")


def _load_tensor(path: Path, what: str) -> object:
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise KeypointFileError(f"{path}: not a readable {what} tensor file (loaded with weights_only=True): {message}") from exc


def load_pose(path: Path) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(N, K, 2) float keypoints and (N, K) bool visibility of a keypoint file (formats in the
    module docstring); one-line errors naming the file. N may be 0 (a pose with no instance)."""
    import torch

    expected = "(instances, keypoints, 2), or (instances, keypoints, 3) with a visibility channel"
    value = _load_tensor(path, "keypoint")
    if not isinstance(value, torch.Tensor):
        raise KeypointFileError(f"{path}: expected a tensor of shape {expected}, got {type(value).__name__}")
    if value.ndim != 3 or value.shape[-1] not in (2, 3):
        raise KeypointFileError(f"{path}: expected shape {expected}, got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise KeypointFileError(f"{path}: expected floating-point keypoints, got {value.dtype}")
    value = value.float()
    if not torch.isfinite(value).all():
        raise KeypointFileError(f"{path}: keypoints must be finite numbers")
    xy = value[..., :2].clone()
    visibility = value[..., 2] > 0 if value.shape[-1] == 3 else None
    sidecar = visibility_file(path)
    if sidecar.is_file():
        if visibility is not None:
            raise KeypointFileError(f"{sidecar}: {path.name} already has a visibility channel; keep one of the two")
        visibility = _load_visibility(sidecar, tuple(xy.shape[:2]))
    if visibility is None:
        visibility = torch.ones(xy.shape[:2], dtype=torch.bool)
    shown = xy[visibility]
    if shown.numel() and (shown.min() < 0 or shown.max() > 1):
        raise KeypointFileError(
            f"{path}: visible keypoints must be normalised to [0, 1], got values in "
            f"[{shown.min().item():.3f}, {shown.max().item():.3f}]"
        )
    return xy, visibility


def _load_visibility(path: Path, shape: tuple[int, ...]) -> "torch.Tensor":
    import torch

    value = _load_tensor(path, "visibility")
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise KeypointFileError(f"{path}: expected a visibility tensor of shape {shape} (instances, keypoints), got {got}")
    return value != 0
