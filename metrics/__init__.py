"""Metrics, registered lazily so that listing them imports no torch.

One line per metric names its torch-free ``MetricInfo`` (name, class, summary, direction, range,
model key, profiles), kept in ``metrics/<module>_meta.py`` beside a class module that imports
torch; the class takes those attributes from the same object (``info = ...``). To add a metric:
one module (its info in it when the module imports torch only inside functions, else in a
``<module>_meta.py`` beside it) and one line here. Metrics from outside the repository:
``$RELBENCH_METRICS`` (see ``relbench.plugins``).
"""

from relbench.registry import Registry

METRICS: Registry = Registry("metric", env="RELBENCH_METRICS")

METRICS.add("relbench.metrics.clip_meta:CLIP_T")
METRICS.add("relbench.metrics.clip_meta:CLIP_I")
METRICS.add("relbench.metrics.dino_meta:INFO")
METRICS.add("relbench.metrics.pose_meta:INFO")
METRICS.add("relbench.metrics.clip_r_meta:INFO")
METRICS.add("relbench.metrics.identity_meta:IDENTITY_CLIP")
METRICS.add("relbench.metrics.identity_meta:IDENTITY_DINO")
METRICS.add("relbench.metrics.identity_meta:PRESENCE")
METRICS.add("relbench.metrics.identity_meta:CONFUSION")
METRICS.add("relbench.metrics.identity_meta:SWAP")
METRICS.add("relbench.metrics.identity_meta:BLEND")
METRICS.add("relbench.metrics.relation_judge_meta:RELATION_VQA")
METRICS.add("relbench.metrics.relation_judge_meta:RELATION_ACC")
METRICS.add("relbench.metrics.relation_judge_meta:RELATION_MC")
