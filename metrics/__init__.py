"""Metrics, registered lazily so that listing them imports no torch."""

from relbench.registry import Registry

METRICS: Registry = Registry("metric")

# The metadata here is what `relbench metrics list` shows without importing the classes; a test
# checks it against each class's attributes. Scores are x100 cosines, not clamped at 0.
METRICS.register(
    "clip_t", "relbench.metrics.clip:CLIPTScore",
    summary="CLIP image-text similarity between the image and its full prompt (x100 cosine)",
    higher_is_better=True, range=(-100.0, 100.0), model="clip", profiles=("tiny", "full"),
)
METRICS.register(
    "clip_i", "relbench.metrics.clip:CLIPIScore",
    summary="CLIP image-image similarity to each subject's reference images (x100 cosine)",
    higher_is_better=True, range=(-100.0, 100.0), model="clip", profiles=("tiny", "full"),
)
METRICS.register(
    "dino", "relbench.metrics.dino:DINOScore",
    summary="DINO ViT-S/16 image-image similarity to each subject's reference images (x100 cosine)",
    higher_is_better=True, range=(-100.0, 100.0), model="dino", profiles=("tiny", "full"),
)
METRICS.register(
    "pose", "relbench.metrics.pose.metric:PoseScore",
    summary="Pose agreement with the relation's reference poses (OKS x inter-subject placement, best reference)",
    higher_is_better=True, range=(0.0, 1.0), model="pose", profiles=("tiny", "full"),
)
