"""Embedding similarities on the x100 cosine scale of the DreamRelation paper.

Pure functions over tensors (torchmetrics' functional style): no models, no state. Inputs need not
be normalised; every function L2-normalises along the last dimension first.

Scale and range: a score is ``100 * cos(a, b)``, in [-100, 100]. It is NOT clamped at 0 (torchmetrics'
``clip_score`` clamps with ``max(100 * cos, 0)``): a negative cosine is rare for CLIP/DINO
embeddings of real photos, and clamping would hide it and bias means of near-zero scores upward.
Cosines are clamped to [-1, 1] only to remove float rounding (an image against itself gives
1.0000001 in float32), so scores stay inside the declared range. Compute in float32 at least, whatever the embedding dtype, so that fp16 embeddings give the same
score as their float32 copies would, up to the embedding rounding itself.
"""

from __future__ import annotations

import torch

SCALE = 100.0
VALUE_RANGE = (-SCALE, SCALE)

# F.normalize's guard against division by zero: a zero vector normalises to zero, so its cosine
# with anything is 0 (not NaN).
_EPS = 1e-12


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(_as_float(x), p=2.0, dim=-1, eps=_EPS)


def cosine_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ``100 * cos(a_i, b_i)``: shapes (N, D) and (N, D) -> (N,); (D,) and (D,) -> ()."""
    if a.shape != b.shape:
        raise ValueError(f"cosine_scores: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return SCALE * (_normalize(a) * _normalize(b)).sum(dim=-1).clamp(-1.0, 1.0)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All pairs ``100 * cos(a_i, b_j)``: (N, D) and (M, D) -> (N, M)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"cosine_matrix: expected (N, D) and (M, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    return SCALE * (_normalize(a) @ _normalize(b).T).clamp(-1.0, 1.0)


def clip_t_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """CLIP-T: ``100 * cos`` between each image and its own prompt, (N, D) x (N, D) -> (N,)."""
    return cosine_scores(image_embeds, text_embeds)


def image_image_similarity(gen_embeds: torch.Tensor, ref_embeds: torch.Tensor) -> torch.Tensor:
    """CLIP-I / DINO for one subject: per generated image, the mean over the subject's references
    of ``100 * cos``. ``gen_embeds`` (N, D) -> (N,), or (D,) -> (); ``ref_embeds`` (R, D), R >= 1.

    The mean of cosines (not the cosine with the mean reference embedding), as DreamBench does.
    """
    if ref_embeds.ndim != 2 or ref_embeds.shape[0] == 0:
        raise ValueError(f"image_image_similarity: expected references of shape (R >= 1, D), got {tuple(ref_embeds.shape)}")
    single = gen_embeds.ndim == 1
    scores = cosine_matrix(gen_embeds.unsqueeze(0) if single else gen_embeds, ref_embeds).mean(dim=1)
    return scores[0] if single else scores
