"""Torch-free metadata (relbench.plugins) of the metrics in ``metrics/identity/metric.py``: listings, run.json and
reports read it; each class takes its name, direction, range, model key, profiles and
description from it (``info = ...``)."""

from relbench.plugins import MetricInfo

IDENTITY_CLIP = MetricInfo(
    name="identity_clip",
    target="relbench.metrics.identity.metric:IdentityCLIPScore",
    summary="CLIP similarity of each detected subject's crop to its own references (x100 cosine; missing = 0)",
    higher_is_better=True,
    range=(-100.0, 100.0),
    model="detector",
    precision=True,
)
IDENTITY_DINO = MetricInfo(
    name="identity_dino",
    target="relbench.metrics.identity.metric:IdentityDINOScore",
    summary="DINO similarity of each detected subject's crop to its own references (x100 cosine; missing = 0)",
    higher_is_better=True,
    range=(-100.0, 100.0),
    model="detector",
    precision=True,
)
PRESENCE = MetricInfo(
    name="presence",
    target="relbench.metrics.identity.metric:PresenceScore",
    summary="Fraction of the case's subjects an open-vocabulary detector finds by their class noun",
    higher_is_better=True,
    range=(0.0, 1.0),
    model="detector",
    precision=True,
)
CONFUSION = MetricInfo(
    name="confusion",
    target="relbench.metrics.identity.metric:ConfusionScore",
    summary="How much more each subject's crop resembles another subject's references than its own (x100 cosine points)",
    higher_is_better=False,
    range=(0.0, 200.0),
    model="detector",
    precision=True,
)
SWAP = MetricInfo(
    name="swap",
    target="relbench.metrics.identity.metric:SwapScore",
    summary="1 when subjects' crops resemble each other's references in a cycle (swapped identities), else 0",
    higher_is_better=False,
    range=(0.0, 1.0),
    model="detector",
    precision=True,
)
BLEND = MetricInfo(
    name="blend",
    target="relbench.metrics.identity.metric:BlendScore",
    summary="1 when one subject's references explain two or more subjects' crops (blended identities), else 0",
    higher_is_better=False,
    range=(0.0, 1.0),
    model="detector",
    precision=True,
)
