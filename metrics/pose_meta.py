"""Torch-free metadata (relbench.plugins) of the metrics in ``metrics/pose/metric.py``: listings, run.json and
reports read it; each class takes its name, direction, range, model key, profiles and
description from it (``info = ...``)."""

from relbench.plugins import MetricInfo

INFO = MetricInfo(
    name="pose",
    target="relbench.metrics.pose.metric:PoseScore",
    summary="Pose agreement with the relation's reference poses (OKS x inter-subject placement, best reference)",
    higher_is_better=True,
    range=(0.0, 1.0),
    model="pose",
)
