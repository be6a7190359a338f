"""Torch-free metadata (relbench.plugins) of the metrics in ``metrics/clip.py``: listings, run.json and
reports read it; each class takes its name, direction, range, model key, profiles and
description from it (``info = ...``)."""

from relbench.plugins import MetricInfo

CLIP_T = MetricInfo(
    name="clip_t",
    target="relbench.metrics.clip:CLIPTScore",
    summary="CLIP image-text similarity between the image and its full prompt (x100 cosine)",
    higher_is_better=True,
    range=(-100.0, 100.0),
    model="clip",
    precision=True,
)
CLIP_I = MetricInfo(
    name="clip_i",
    target="relbench.metrics.clip:CLIPIScore",
    summary="CLIP image-image similarity to each subject's reference images (x100 cosine)",
    higher_is_better=True,
    range=(-100.0, 100.0),
    model="clip",
    precision=True,
)
