"""The report's judge-check section: how the judge behind the relation metrics did on a labelled set.

For every judge named by a relation metric's settings in the runs (``judge_id`` and the other
identity settings, ``relation_judge.check.judge_identity``), the checks ``relbench judge check``
filed for exactly that judge (same identity, same template version) are shown: per judge set,
accuracy, balanced accuracy, AUROC, ECE and the unparseable fraction of the main scopes, the
CircularEval line and the check's notes. No check filed: no section (and one line saying how to
make one). Every value from files goes through ``html.escape``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape
from typing import Any

SHOWN_SCOPES = ("all", "relation", "presence")  # and every relation:<id>
COLUMNS = ("n", "accuracy", "balanced_accuracy", "auroc", "ece", "unparseable_fraction")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else escape(str(value))


def judged_metrics(metric_info: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """identity key -> (metric names, one metric's settings) for every metric whose settings name a judge."""
    from relbench.metrics.relation_judge.check import identity_key, judge_identity

    out: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for name, entry in metric_info.items():
        settings = entry.get("settings") if isinstance(entry, Mapping) else None
        if not isinstance(settings, Mapping) or not settings.get("judge_id"):
            continue
        key = identity_key(judge_identity(settings))
        out.setdefault(key, ([], dict(settings)))[0].append(name)
    return out


def judge_check_section(metric_info: Mapping[str, Mapping[str, Any]]) -> str:
    """The section's HTML, or "" when no metric of the runs is judged by a VLM."""
    from relbench.metrics.relation_judge.check import find_checks

    judged = judged_metrics(metric_info)
    if not judged:
        return ""
    parts = ['<h2 id="judge-check">Judge check</h2>']
    for names, settings in judged.values():
        who = f"<code>{escape(str(settings.get('judge_id')))}</code> (revision {escape(str(settings.get('revision') or '-'))}, " \
              f"{escape(str(settings.get('template_version') or '-'))}), judging {escape(', '.join(names))}"
        checks = find_checks(settings)
        if not checks:
            parts.append(f'<p class="muted">No check of judge {who} on file; run <code>relbench judge check</code> '
                         "with the same --model judge=... and --profile to measure it on labelled images.</p>")
            continue
        for check in checks:
            info = check.get("set") or {}
            parts.append(
                f"<p>Judge {who}: checked {escape(str(check.get('created')))} ({escape(str(check.get('profile')))} profile) "
                f"on <b>{escape(str(info.get('name')))}</b> (digest <code>{escape(str(info.get('digest', ''))[:12])}</code>, "
                f"{_cell(info.get('items'))} images, {_cell(info.get('yes'))} yes / {_cell(info.get('no'))} no questions).</p>"
            )
            header = "".join(f"<th>{escape(c.replace('_', ' '))}</th>" for c in COLUMNS)
            parts.append(f"<table><tr><th>scope</th>{header}</tr>")
            scopes = check.get("scopes") or {}
            for scope, stats in scopes.items():
                if scope in SHOWN_SCOPES or str(scope).startswith("relation:"):
                    cells = "".join(f"<td>{_cell(stats.get(c))}</td>" for c in COLUMNS)
                    parts.append(f"<tr><td>{escape(str(scope))}</td>{cells}</tr>")
            parts.append("</table>")
            choice = (check.get("choice") or {}).get("all")
            if choice:
                bias = ", ".join(f"{escape(str(k))} {float(v):.0f}%" for k, v in (choice.get("position_bias") or {}).items())
                parts.append(f"<p>Multiple choice: CircularEval accuracy {_cell(choice.get('circular_accuracy'))} "
                             f"({_cell(choice.get('n'))} questions), single rotations {_cell(choice.get('rotation_accuracy'))}; "
                             f"position bias {bias or 'n/a'}.</p>")
            notes = check.get("notes") or []
            if notes:
                parts.append("<ul>" + "".join(f"<li>{escape(str(note))}</li>" for note in notes) + "</ul>")
    return "\n".join(parts)
