"""The report's plots, drawn with matplotlib and returned as inline SVG strings (no files).

Each function takes the report's tables with a ``label`` column (the configuration's display
name) and returns an ``<svg>`` element, or None when there is nothing to draw. Text stays text
(``svg.fonttype = none``) so labels can be searched and read by screen readers; matplotlib
escapes it for XML, and ``_text`` escapes ``$`` so that a name is never parsed as mathtext.
Output is deterministic: a fixed ``svg.hashsalt``, no date metadata, and element ids prefixed per
plot so that several plots can share one page without id clashes.

Only ``matplotlib.figure.Figure`` is used (no pyplot): no global backend switch, no open figures.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

RC = {"svg.fonttype": "none", "svg.hashsalt": "relbench", "font.size": 8, "font.family": "DejaVu Sans"}
BAR_COLOR = "#4c72b0"
# What matplotlib puts in each SVG's own <style>, scoped to the plots; the page includes it.
SVG_CSS = "svg.plot * { stroke-linejoin: round; stroke-linecap: butt; }"


def _text(value: Any) -> str:
    """Plain text for a matplotlib label: ``$`` escaped so a user string never becomes mathtext."""
    return str(value).replace("$", r"\$")


def _arrow(direction: bool | None) -> str:
    return " \u2191" if direction else " \u2193" if direction is False else ""


def _svg(figure: Any, prefix: str, title: str) -> str:
    """The figure as an ``<svg>`` element for inline use (prolog and metadata removed, ids prefixed)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context(RC):
        figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    # matplotlib's "*{stroke-linejoin...}" would style the whole page; the page's CSS scopes it (SVG_CSS).
    svg = re.sub(r'<style type="text/css">.*?</style>\s*', "", svg, flags=re.S)
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})" if m.group(1) in ids else m.group(0), svg)
    svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}-{m.group(1)}"' if m.group(1) in ids else m.group(0), svg)
    from html import escape

    return svg.replace("<svg ", f'<svg role="img" aria-label="{escape(title, quote=True)}" class="plot" ', 1)


def _figure(width: float, height: float) -> Any:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(RC):
        return Figure(figsize=(width, height))


def metric_bars(summary: pd.DataFrame, directions: dict[str, bool | None]) -> str | None:
    """One bar chart per metric: each configuration's mean with its 95% CI as error bars."""
    import matplotlib

    rows = summary.loc[summary["mean"].notna()]
    metrics = list(dict.fromkeys(rows["metric"]))
    if not metrics:
        return None
    labels = list(dict.fromkeys(summary["label"]))
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    width = max(2.8, 0.55 * len(labels) + 1.4)
    with matplotlib.rc_context(RC):
        figure = _figure(width * ncols, 3.0 * nrows)
        for i, metric in enumerate(metrics):
            axes = figure.add_subplot(nrows, ncols, i + 1)
            mine = summary.loc[summary["metric"] == metric].set_index("label").reindex(labels)
            means = mine["mean"].to_numpy(dtype=float)
            low = np.nan_to_num(means - mine["ci_low"].to_numpy(dtype=float), nan=0.0)
            high = np.nan_to_num(mine["ci_high"].to_numpy(dtype=float) - means, nan=0.0)
            x = np.arange(len(labels))
            axes.bar(x, np.nan_to_num(means, nan=0.0), color=BAR_COLOR, yerr=[low, high], capsize=3, ecolor="#222")
            axes.set_xticks(x, [_text(label) for label in labels], rotation=30, ha="right")
            axes.set_title(_text(metric) + _arrow(directions.get(metric)))
            axes.grid(axis="y", alpha=0.3)
        figure.tight_layout()
    return _svg(figure, "bars", "Mean of each metric per method with 95% confidence intervals")


def relation_heatmap(per_relation: pd.DataFrame, metric: str | None) -> str | None:
    """Methods x relations, coloured and annotated with ``metric``'s mean; None without values."""
    import matplotlib

    if metric is None or metric not in per_relation.columns or per_relation[metric].notna().sum() == 0:
        return None
    relations = [str(r) for r in dict.fromkeys(per_relation["relation"])]
    labels = list(dict.fromkeys(per_relation["label"]))
    grid = np.full((len(labels), len(relations)), np.nan)
    for record in per_relation.to_dict("records"):
        grid[labels.index(record["label"]), relations.index(str(record["relation"]))] = record[metric]
    with matplotlib.rc_context(RC):
        figure = _figure(max(4.0, 0.8 * len(relations) + 2.5), max(2.0, 0.45 * len(labels) + 1.5))
        axes = figure.add_subplot(1, 1, 1)
        image = axes.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis")
        axes.set_xticks(np.arange(len(relations)), [_text(r) for r in relations], rotation=45, ha="right")
        axes.set_yticks(np.arange(len(labels)), [_text(label) for label in labels])
        finite = grid[np.isfinite(grid)]
        middle = (finite.min() + finite.max()) / 2
        for (row, column), value in np.ndenumerate(grid):
            if np.isfinite(value):
                axes.text(column, row, f"{value:.3g}", ha="center", va="center", fontsize=7,
                          color="white" if value < middle else "black")
        axes.set_title(_text(f"{metric} per relation (mean over cases)"))
        figure.colorbar(image, ax=axes)
        figure.tight_layout()
    return _svg(figure, "heat", f"{metric} per method and relation")


def identity_relation_scatter(summary: pd.DataFrame, x_metric: str | None, y_metric: str | None) -> str | None:
    """Each configuration at (identity metric, relation metric) with CI bars; None unless both exist."""
    import matplotlib

    if x_metric is None or y_metric is None:
        return None
    x = summary.loc[summary["metric"] == x_metric].set_index("label")
    y = summary.loc[summary["metric"] == y_metric].set_index("label")
    labels = [label for label in dict.fromkeys(summary["label"])
              if label in x.index and label in y.index and np.isfinite(x.at[label, "mean"]) and np.isfinite(y.at[label, "mean"])]
    if not labels:
        return None
    with matplotlib.rc_context(RC):
        figure = _figure(4.2, 3.4)
        axes = figure.add_subplot(1, 1, 1)
        for label in labels:
            xm, ym = float(x.at[label, "mean"]), float(y.at[label, "mean"])
            xerr = _err(xm, x.at[label, "ci_low"], x.at[label, "ci_high"])
            yerr = _err(ym, y.at[label, "ci_low"], y.at[label, "ci_high"])
            axes.errorbar([xm], [ym], xerr=xerr, yerr=yerr, fmt="o", color=BAR_COLOR, ecolor="#888", capsize=2)
            axes.annotate(_text(label), (xm, ym), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axes.set_xlabel(_text(f"identity: {x_metric}"))
        axes.set_ylabel(_text(f"relation: {y_metric}"))
        axes.grid(alpha=0.3)
        figure.tight_layout()
    return _svg(figure, "scatter", f"identity ({x_metric}) against relation accuracy ({y_metric}) per method")


def _err(mean: float, low: float, high: float) -> list[list[float]]:
    if not (np.isfinite(low) and np.isfinite(high)):
        return [[0.0], [0.0]]
    return [[mean - float(low)], [float(high) - mean]]


def first_present(candidates: Sequence[str], available: Sequence[str]) -> str | None:
    """The first of ``candidates`` that is in ``available``."""
    return next((name for name in candidates if name in available), None)
