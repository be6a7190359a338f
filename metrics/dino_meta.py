"""Torch-free metadata (relbench.plugins) of the metrics in ``metrics/dino.py``: listings, run.json and
reports read it; each class takes its name, direction, range, model key, profiles and
description from it (``info = ...``)."""

from relbench.plugins import MetricInfo

INFO = MetricInfo(
    name="dino",
    target="relbench.metrics.dino:DINOScore",
    summary="DINO ViT-S/16 image-image similarity to each subject's reference images (x100 cosine)",
    higher_is_better=True,
    range=(-100.0, 100.0),
    model="dino",
    precision=True,
)
