"""Per-subject identity, presence and confusion (swap / blend) of generated images.

``detector.py`` finds each subject by its class noun with an open-vocabulary detector (OWLv2);
``metric.py`` assigns boxes to subjects, crops, embeds crops and references with CLIP and DINO and
exposes the metrics ``identity_clip``, ``identity_dino``, ``presence``, ``confusion``, ``swap`` and
``blend``. The math is in ``relbench.metrics.functional.identity``; the definitions, with formulas,
in docs/metrics.md. Nothing is imported here, so that listing metrics imports no torch.
"""
