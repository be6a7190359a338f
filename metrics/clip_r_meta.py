"""Torch-free metadata (relbench.plugins) of the metrics in ``metrics/clip_r.py``: listings, run.json and
reports read it; each class takes its name, direction, range, model key, profiles and
description from it (``info = ...``)."""

from relbench.plugins import MetricInfo

INFO = MetricInfo(
    name="clip_r",
    target="relbench.metrics.clip_r:CLIPRScore",
    summary="CLIP image-text similarity between the image and the relation phrase alone (x100 cosine)",
    higher_is_better=True,
    range=(-100.0, 100.0),
    model="clip",
    precision=True,
)
