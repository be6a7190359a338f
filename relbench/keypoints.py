"""Reading keypoint tensors (DreamRelation's ``*_keyposes.pth``) safely.

The files are torch pickles; they are only ever read with ``weights_only=True`` so that a file
from the internet cannot run code. Shapes are (instances, keypoints, 2) with normalised (x, y).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from relbench.errors import RelbenchError

if TYPE_CHECKING:
    import torch


class KeypointFileError(RelbenchError):
    pass


def load_keypoints(path: Path) -> "torch.Tensor":
    """Load a (N, K, 2) float tensor of normalised keypoints; one-line errors for bad files."""
    import pickle
    import zipfile

    import torch

    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise KeypointFileError(f"{path}: not a readable keypoint tensor file (loaded with weights_only=True): {message}") from exc
    if not isinstance(value, torch.Tensor):
        raise KeypointFileError(f"{path}: expected a tensor of shape (instances, keypoints, 2), got {type(value).__name__}")
    if value.ndim != 3 or value.shape[-1] != 2:
        raise KeypointFileError(f"{path}: expected shape (instances, keypoints, 2), got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise KeypointFileError(f"{path}: expected floating-point keypoints, got {value.dtype}")
    value = value.float()
    if value.numel() == 0:  # no instance: a reference with no keypoints (scored NaN with a reason)
        return value
    if not torch.isfinite(value).all() or value.min() < 0 or value.max() > 1:
        raise KeypointFileError(
            f"{path}: keypoints must be normalised to [0, 1], got values in [{value.min().item():.3f}, {value.max().item():.3f}]"
        )
    return value
