"""Torch-free metadata (relbench.plugins) of the metrics in ``metrics/relation_judge/metric.py``: listings, run.json and
reports read it; each class takes its name, direction, range, model key, profiles and
description from it (``info = ...``)."""

from relbench.plugins import MetricInfo

RELATION_VQA = MetricInfo(
    name="relation_vqa",
    target="relbench.metrics.relation_judge.metric:RelationVQAScore",
    summary="VLM judge: 100 x normalised P(yes) that the image shows the relation (VQAScore)",
    higher_is_better=True,
    range=(0.0, 100.0),
    model="judge",
)
RELATION_ACC = MetricInfo(
    name="relation_acc",
    target="relbench.metrics.relation_judge.metric:RelationAccuracy",
    summary="VLM judge: 100 if both subjects are present and the relation is shown (gated yes/no), else 0",
    higher_is_better=True,
    range=(0.0, 100.0),
    model="judge",
)
RELATION_MC = MetricInfo(
    name="relation_mc",
    target="relbench.metrics.relation_judge.metric:RelationMultipleChoice",
    summary="VLM judge: 100 if the true relation is chosen among distractors in every rotation (CircularEval), else 0",
    higher_is_better=True,
    range=(0.0, 100.0),
    model="judge",
)
