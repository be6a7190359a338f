"""``relbench compare RUN_DIR... -a METHOD[@HASH] -b METHOD[@HASH]``: two configurations, case by case.

The runs are merged as for the leaderboard; the statistics are ``relbench.reports.stats.compare``
(paired over the cases both configurations have, seeds averaged per case: mean difference a - b
with a bootstrap 95% CI, a two-sided sign test, and a warning when the two CIs overlap on the
headline metric). A winner is named only when the CI of a - b excludes 0 (and the metric's
direction is known); otherwise the text says "no difference detected". ``format_comparison``
gives the text the command prints; ``comparison_table`` the CSV it writes with ``--output``
(columns ``a``, ``b``, then ``stats.COMPARE_COLUMNS``; ``better`` is ``a``, ``b`` or empty).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from relbench.errors import RelbenchError
from relbench.reports.leaderboard import RunSet, load_runs, save_csv
from relbench.reports.stats import Comparison, compare, label


def compare_runs(
    run_dirs: Sequence[str | Path], a: str, b: str, metrics: Sequence[str] | None = None, headline: str | None = None
) -> Comparison:
    """Load and merge ``run_dirs`` and compare configurations ``a`` and ``b`` on ``metrics`` (all by
    default); ``headline`` as ``--headline`` (default: ``stats.choose_headline``)."""
    return compare_run_set(load_runs(run_dirs), a, b, metrics, headline)


def compare_run_set(
    run_set: RunSet, a: str, b: str, metrics: Sequence[str] | None = None, headline: str | None = None
) -> Comparison:
    """``compare_runs`` on runs already read (``relbench.compare`` passes the runs of its table)."""
    if run_set.samples.empty:
        raise RelbenchError(f"{run_set.runs[0][0]}: no samples yet; run `relbench evaluate` first")
    return compare(run_set.samples, a, b, metrics=metrics, directions=run_set.directions(), headline=headline)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.{digits}g}"


def verdict(row: dict[str, Any]) -> str:
    """The winner of one COMPARE_COLUMNS row in words: only when the CI of a - b excludes 0."""
    if row["better"]:
        return f"{row['better']} is better"
    low, high = row["diff_ci_low"], row["diff_ci_high"]
    if not math.isnan(low) and not (low <= 0 <= high):
        return "a is higher (direction unknown)" if low > 0 else "b is higher (direction unknown)"
    return "no difference detected"


def _headline_line(result: Comparison) -> str:
    if result.headline is None:
        return f"headline metric: none ({result.headline_reason})"
    row = result.headline_row or {}
    low, high = row.get("diff_ci_low", math.nan), row.get("diff_ci_high", math.nan)
    if math.isnan(low):
        why = "fewer than 2 common cases, no CI of a - b"
    else:
        why = f"95% CI of a - b [{_num(low)}, {_num(high)}] {'includes' if low <= 0 <= high else 'excludes'} 0"
    return (
        f"headline metric {result.headline} ({result.headline_reason}): {verdict(row)} ({why}); "
        f"95% CI of a [{_num(result.headline_ci_a[0])}, {_num(result.headline_ci_a[1])}], "
        f"of b [{_num(result.headline_ci_b[0])}, {_num(result.headline_ci_b[1])}]"
    )


def format_comparison(result: Comparison) -> str:
    """The comparison as plain text: one line per metric, then the headline check."""
    arrows = {True: " (higher better)", False: " (lower better)", None: ""}
    header = ("metric", "cases", "mean a", "mean b", "a - b", "95% CI of a - b", "a>b", "b>a", "ties", "sign p", "verdict")
    lines = [header]
    for row in result.table.to_dict("records"):
        direction = row["higher_is_better"] if isinstance(row["higher_is_better"], bool) else None
        ci = f"[{_num(row['diff_ci_low'])}, {_num(row['diff_ci_high'])}]" if not math.isnan(row["diff_ci_low"]) else "-"
        lines.append((
            f"{row['metric']}{arrows[direction]}", str(row["n_cases"]), _num(row["mean_a"]), _num(row["mean_b"]),
            _num(row["mean_diff"]), ci, str(row["n_a_higher"]), str(row["n_b_higher"]), str(row["n_ties"]),
            _num(row["sign_test_p"], 3), verdict(row),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [f"a = {label(result.a)}, b = {label(result.b)} (paired over common cases; seeds averaged within a case)"]
    text += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    text.append(_headline_line(result))
    if result.warning:
        text.append(f"warning: {result.warning}")
    return "\n".join(text)


def comparison_table(result: Comparison) -> pd.DataFrame:
    """The per-metric table with the two configurations named in front (``a``, ``b``)."""
    return result.table.assign(a=label(result.a), b=label(result.b))[["a", "b", *result.table.columns]]


def write_comparison_csv(result: Comparison, output: str | Path) -> Path:
    return save_csv(comparison_table(result), output)
