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
METRICS.register(
    "clip_r", "relbench.metrics.clip_r:CLIPRScore",
    summary="CLIP image-text similarity between the image and the relation phrase alone (x100 cosine)",
    higher_is_better=True, range=(-100.0, 100.0), model="clip", profiles=("tiny", "full"),
)
METRICS.register(
    "identity_clip", "relbench.metrics.identity.metric:IdentityCLIPScore",
    summary="CLIP similarity of each detected subject's crop to its own references (x100 cosine; missing = 0)",
    higher_is_better=True, range=(-100.0, 100.0), model="detector", profiles=("tiny", "full"),
)
METRICS.register(
    "identity_dino", "relbench.metrics.identity.metric:IdentityDINOScore",
    summary="DINO similarity of each detected subject's crop to its own references (x100 cosine; missing = 0)",
    higher_is_better=True, range=(-100.0, 100.0), model="detector", profiles=("tiny", "full"),
)
METRICS.register(
    "presence", "relbench.metrics.identity.metric:PresenceScore",
    summary="Fraction of the case's subjects an open-vocabulary detector finds by their class noun",
    higher_is_better=True, range=(0.0, 1.0), model="detector", profiles=("tiny", "full"),
)
METRICS.register(
    "confusion", "relbench.metrics.identity.metric:ConfusionScore",
    summary="How much more each subject's crop resembles another subject's references than its own (x100 cosine points)",
    higher_is_better=False, range=(0.0, 200.0), model="detector", profiles=("tiny", "full"),
)
METRICS.register(
    "swap", "relbench.metrics.identity.metric:SwapScore",
    summary="1 when subjects' crops resemble each other's references in a cycle (swapped identities), else 0",
    higher_is_better=False, range=(0.0, 1.0), model="detector", profiles=("tiny", "full"),
)
METRICS.register(
    "blend", "relbench.metrics.identity.metric:BlendScore",
    summary="1 when one subject's references explain two or more subjects' crops (blended identities), else 0",
    higher_is_better=False, range=(0.0, 1.0), model="detector", profiles=("tiny", "full"),
)
METRICS.register(
    "relation_vqa", "relbench.metrics.relation_judge.metric:RelationVQAScore",
    summary="VLM judge: 100 x normalised P(yes) that the image shows the relation (VQAScore)",
    higher_is_better=True, range=(0.0, 100.0), model="judge", profiles=("tiny", "full"),
)
METRICS.register(
    "relation_acc", "relbench.metrics.relation_judge.metric:RelationAccuracy",
    summary="VLM judge: 100 if both subjects are present and the relation is shown (gated yes/no), else 0",
    higher_is_better=True, range=(0.0, 100.0), model="judge", profiles=("tiny", "full"),
)
METRICS.register(
    "relation_mc", "relbench.metrics.relation_judge.metric:RelationMultipleChoice",
    summary="VLM judge: 100 if the true relation is chosen among distractors in every rotation (CircularEval), else 0",
    higher_is_better=True, range=(0.0, 100.0), model="judge", profiles=("tiny", "full"),
)
