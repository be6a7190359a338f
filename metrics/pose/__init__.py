"""Keypoint-pose agreement with a relation's reference poses (the ``pose`` metric).

``metric``: the stateful metric and its inputs; ``backends``: the pose estimators (ViTPose /
ViTPose++ via transformers, mediapipe BlazePose, mmpose); the math is in
``relbench.metrics.functional.keypoints``. Importing this package loads no model.
"""

from relbench.metrics.pose.metric import PoseInputs, PoseReference, PoseScore

__all__ = ["PoseInputs", "PoseReference", "PoseScore"]
