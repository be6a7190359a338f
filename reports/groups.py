"""Metric groups: how the report splits the leaderboard, the breakdowns and the plots.

A page with every metric in one table is wider than a screen (14 metrics: 7 fit at 1400 px), and
a reader compares metrics that answer one question side by side: is the relation shown (the
relation judge metrics, found by their verdict detail: ``tables.judge_metrics``), are the subjects
themselves (identity, presence, confusion, swap, blend), is the pose right, and the paper's four
numbers (CLIP-T, CLIP-R, CLIP-I, DINO). A metric in none of these (a plugin) goes to "other".
Groups hold at most ``MAX_COLUMNS`` metrics so each table fits 1400 px; a larger group is split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# The registered relation judge metrics; a plugin judge is found by its verdict detail instead.
RELATION_GROUP: tuple[str, ...] = ("relation_vqa", "relation_acc", "relation_mc")
# The DreamRelation paper's table columns, in its order.
PAPER_METRICS: tuple[str, ...] = ("clip_t", "clip_r", "clip_i", "dino")
IDENTITY_GROUP: tuple[str, ...] = ("identity_dino", "identity_clip", "presence", "confusion", "swap", "blend")
POSE_GROUP: tuple[str, ...] = ("pose",)
MAX_COLUMNS = 6


@dataclass(frozen=True)
class MetricGroup:
    key: str  # for HTML ids and classes: relation, identity, pose, paper, other (other-2, ... when split)
    title: str
    metrics: tuple[str, ...]


def metric_groups(metrics: Sequence[str], judge: Sequence[str], headline: str | None = None) -> list[MetricGroup]:
    """``metrics`` (table order) in groups, empty groups left out; the group of ``headline`` first,
    the headline first in it.

    ``judge``: the relation judge metrics found in the data (``tables.judge_metrics``). Within a
    group, metrics keep the order of the group's list (identity, paper) or of ``metrics``.
    """
    present = list(dict.fromkeys(metrics))
    relation = [m for m in present if m in {*judge, *RELATION_GROUP}]
    known = {*relation, *IDENTITY_GROUP, *POSE_GROUP, *PAPER_METRICS}
    candidates = [
        ("relation", "Relation (judge)", relation),
        ("identity", "Identity", [m for m in IDENTITY_GROUP if m in present]),
        ("pose", "Pose", [m for m in POSE_GROUP if m in present]),
        ("paper", "Paper metrics (CLIP-T, CLIP-R, CLIP-I, DINO)", [m for m in PAPER_METRICS if m in present]),
        ("other", "Other", [m for m in present if m not in known]),
    ]
    groups: list[MetricGroup] = []
    for key, title, names in candidates:
        names.sort(key=lambda name: name != headline)  # stable
        for start in range(0, len(names), MAX_COLUMNS):
            part = start // MAX_COLUMNS
            groups.append(MetricGroup(key if part == 0 else f"{key}-{part + 1}", title, tuple(names[start:start + MAX_COLUMNS])))
    if headline is not None:
        groups.sort(key=lambda group: headline not in group.metrics)  # stable: the rest keep their order
    return groups
