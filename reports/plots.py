"""The report's plots, drawn with matplotlib and returned as inline SVG strings (no files).

Each function takes the report's tables with a ``label`` column (the configuration's display
name) and returns an ``<svg>`` element, or None when there is nothing to draw. Text stays text
(``svg.fonttype = none``) so labels can be searched and read by screen readers; matplotlib
escapes it for XML, and ``_text`` escapes ``$`` so that a name is never parsed as mathtext.
Output is deterministic: a fixed ``svg.hashsalt``, no date metadata, and element ids prefixed per
plot so that several plots can share one page without id clashes.

What is drawn, and what is not: a mean with its CI is a dot and a whisker on a value axis fitted to
the data (``fitted_limits``: the range of the means and CI ends, padded by ``PAD`` of it each
side, within the metric's declared range), not a bar from 0 that makes 90 and 93 look alike; a
metric whose every mean and CI is one value (``has_spread``) gets no panel, a heat map whose every
cell is one value is not drawn; configurations keep one colour (``method_colors``) in every plot.
Each dot plot's ``<svg>`` (and the scatter's, for its y axis) carries ``data-panels`` (per panel:
metric, axis limits, data range).

Only ``matplotlib.figure.Figure`` is used (no pyplot): no global backend switch, no open figures.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

RC = {"svg.fonttype": "none", "svg.hashsalt": "relbench", "font.size": 8, "font.family": "DejaVu Sans"}
# What matplotlib puts in each SVG's own <style>, scoped to the plots; the page includes it.
SVG_CSS = "svg.plot * { stroke-linejoin: round; stroke-linecap: butt; }"


def _text(value: Any) -> str:
    """Plain text for a matplotlib label: ``$`` escaped so a user string never becomes mathtext."""
    return str(value).replace("$", r"\$")


def _arrow(direction: bool | None) -> str:
    return " \u2191" if direction else " \u2193" if direction is False else ""


def _svg(figure: Any, prefix: str, title: str, panels: Sequence[Panel] = ()) -> str:
    """The figure as an ``<svg>`` element for inline use (prolog and metadata removed, ids prefixed);
    ``panels`` (value axes and data ranges) go into ``data-panels`` as JSON, for tests and readers."""
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

    attributes = f'role="img" aria-label="{escape(title, quote=True)}" class="plot" '
    if panels:
        attributes += f'data-panels="{escape(json.dumps([p.as_json() for p in panels]), quote=True)}" '
    return svg.replace("<svg ", f"<svg {attributes}", 1)


def _figure(width: float, height: float) -> Any:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(RC):
        return Figure(figsize=(width, height))


PAD = 0.1  # each side of a value axis: this fraction of the data's range (means and CI ends)
MARKERS = "osD^vP*Xph"


@dataclass(frozen=True)
class Panel:
    """One metric's axes: its value-axis limits and the data range they were fitted to."""

    metric: str
    ylim: tuple[float, float]
    data: tuple[float, float]  # the smallest and largest mean or CI end plotted

    def as_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "ylim": list(self.ylim), "data": list(self.data)}


def method_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per configuration, the same in every plot (tab10, then tab20's light shades)."""
    from matplotlib import colormaps

    palette = [colormaps["tab10"](i) for i in range(10)] + [colormaps["tab20"](2 * i + 1) for i in range(10)]
    hexes = ["#%02x%02x%02x" % tuple(round(255 * c) for c in color[:3]) for color in palette]
    return {label: hexes[i % len(hexes)] for i, label in enumerate(labels)}


def data_range(rows: pd.DataFrame) -> tuple[float, float] | None:
    """The smallest and largest of the means and CI ends in ``rows`` (summary rows); None without one."""
    values = rows[["mean", "ci_low", "ci_high"]].to_numpy(dtype=float).ravel()
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if len(values) else None


def has_spread(low: float, high: float) -> bool:
    """Whether a range is more than rounding: a metric whose every mean and CI is one value has none."""
    return high - low > 1e-9 * max(1.0, abs(low), abs(high))


def fitted_limits(low: float, high: float, bounds: Sequence[float] | None = None) -> tuple[float, float]:
    """The value axis for data from ``low`` to ``high``: padded by ``PAD`` of the range each side,
    never past the metric's declared range ``bounds`` (unless the data itself is)."""
    pad = PAD * (high - low)
    lower, upper = low - pad, high + pad
    if bounds is not None and len(bounds) == 2:
        lower = max(lower, min(float(bounds[0]), low))
        upper = min(upper, max(float(bounds[1]), high))
    return lower, upper


def spreadless(summary: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """The metrics with values whose means and CIs are all one value: nothing to plot."""
    out = []
    for metric in metrics:
        found = data_range(summary.loc[summary["metric"] == metric])
        if found is not None and not has_spread(*found):
            out.append(metric)
    return out


def metric_dots(
    summary: pd.DataFrame,
    metrics: Sequence[str],
    labels: Sequence[str],
    directions: dict[str, bool | None],
    ranges: dict[str, Sequence[float]],
    prefix: str,
    title: str,
) -> str | None:
    """One panel per metric of a group: each configuration's mean (dot) with its 95% CI (whisker),
    on a value axis fitted to the data (``fitted_limits``), left to right in the order of
    ``labels`` (the leaderboard's), coloured by ``method_colors`` (the page shows the legend).
    Metrics without a value or without spread get no panel; None when none is left."""
    import matplotlib

    drawn = []
    for metric in metrics:
        found = data_range(summary.loc[summary["metric"] == metric])
        if found is not None and has_spread(*found):
            drawn.append((metric, found))
    if not drawn:
        return None
    colors = method_colors(labels)
    per_panel = max(1.1, 0.12 * len(labels) + 0.6)
    panels: list[Panel] = []
    with matplotlib.rc_context(RC):
        figure = _figure(per_panel * len(drawn), 1.55)
        for i, (metric, (low, high)) in enumerate(drawn):
            axes = figure.add_subplot(1, len(drawn), i + 1)
            mine = summary.loc[summary["metric"] == metric].set_index("label").reindex(list(labels))
            for x, label in enumerate(labels):
                mean = float(mine.at[label, "mean"])
                if not np.isfinite(mean):
                    continue
                axes.errorbar([x], [mean], yerr=_err(mean, mine.at[label, "ci_low"], mine.at[label, "ci_high"]),
                              fmt="o", color=colors[label], ecolor=colors[label], elinewidth=1.2, capsize=3, markersize=4)
            ylim = fitted_limits(low, high, ranges.get(metric))
            axes.set_ylim(*ylim)
            axes.set_xlim(-0.6, len(labels) - 0.4)
            # Configurations by colour (the page's legend), in leaderboard order: names under every
            # panel would overlap.
            axes.set_xticks([])
            axes.set_title(_text(metric) + _arrow(directions.get(metric)), fontsize=8)
            axes.grid(axis="y", alpha=0.3)
            axes.tick_params(axis="y", labelsize=7)
            panels.append(Panel(metric, tuple(float(v) for v in axes.get_ylim()), (low, high)))
        figure.tight_layout(w_pad=0.6)
    return _svg(figure, prefix, f"{title}: mean of each metric per method with 95% confidence intervals", panels)


def relation_heatmap(per_relation: pd.DataFrame, metric: str | None, labels: Sequence[str] | None = None) -> str | None:
    """Methods x relations, coloured and annotated with ``metric``'s mean; None without values or
    when every cell holds the same value (one colour says nothing). Rows in the order of
    ``labels`` (the leaderboard's) when given."""
    import matplotlib

    if metric is None or metric not in per_relation.columns or per_relation[metric].notna().sum() == 0:
        return None
    relations = [str(r) for r in dict.fromkeys(per_relation["relation"])]
    present = list(dict.fromkeys(per_relation["label"]))
    labels = [label for label in labels if label in present] if labels is not None else present
    grid = np.full((len(labels), len(relations)), np.nan)
    for record in per_relation.to_dict("records"):
        if record["label"] in labels:
            grid[labels.index(record["label"]), relations.index(str(record["relation"]))] = record[metric]
    finite = grid[np.isfinite(grid)]
    if not len(finite):
        return None
    if not has_spread(float(finite.min()), float(finite.max())):
        return None
    with matplotlib.rc_context(RC):
        figure = _figure(max(3.0, 0.4 * len(relations) + 1.8), max(1.8, 0.2 * len(labels) + 0.9))
        axes = figure.add_subplot(1, 1, 1)
        image = axes.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis")
        axes.set_xticks(np.arange(len(relations)), [_text(r) for r in relations], rotation=45, ha="right")
        axes.set_yticks(np.arange(len(labels)), [_text(label) for label in labels])
        middle = (finite.min() + finite.max()) / 2
        for (row, column), value in np.ndenumerate(grid):
            if np.isfinite(value):
                axes.text(column, row, f"{value:.3g}", ha="center", va="center", fontsize=7,
                          color="white" if value < middle else "black")
        axes.set_title(_text(f"{metric} per relation (mean over cases)"))
        figure.colorbar(image, ax=axes)
        figure.tight_layout()
    return _svg(figure, "heat", f"{metric} per method and relation")


def identity_relation_scatter(
    summary: pd.DataFrame, x_metric: str | None, y_metric: str | None, labels: Sequence[str] | None = None,
) -> str | None:
    """Each configuration at (identity metric, relation metric) with CI bars, told apart by colour and
    marker in a legend beside the axes (names at the points overlap when methods score alike);
    None unless both metrics have values."""
    import matplotlib

    if x_metric is None or y_metric is None:
        return None
    x = summary.loc[summary["metric"] == x_metric].set_index("label")
    y = summary.loc[summary["metric"] == y_metric].set_index("label")
    order = list(labels) if labels is not None else list(dict.fromkeys(summary["label"]))
    shown = [label for label in order
             if label in x.index and label in y.index and np.isfinite(x.at[label, "mean"]) and np.isfinite(y.at[label, "mean"])]
    if not shown:
        return None
    colors = method_colors(order)
    with matplotlib.rc_context(RC):
        figure = _figure(4.0, 2.2)
        axes = figure.add_subplot(1, 1, 1)
        for i, label in enumerate(shown):
            xm, ym = float(x.at[label, "mean"]), float(y.at[label, "mean"])
            xerr = _err(xm, x.at[label, "ci_low"], x.at[label, "ci_high"])
            yerr = _err(ym, y.at[label, "ci_low"], y.at[label, "ci_high"])
            axes.errorbar([xm], [ym], xerr=xerr, yerr=yerr, fmt=MARKERS[order.index(label) % len(MARKERS)],
                          color=colors[label], ecolor=colors[label], alpha=0.9, capsize=2, markersize=5,
                          label=_text(label))
        axes.set_xlabel(_text(f"identity: {x_metric}"))
        axes.set_ylabel(_text(f"relation: {y_metric}"))
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
        # Both axes fitted to the plotted means and CIs, like the dot plots.
        panels = []
        for frame, set_limits, get_limits, metric in ((x, axes.set_xlim, axes.get_xlim, x_metric),
                                                      (y, axes.set_ylim, axes.get_ylim, y_metric)):
            found = data_range(frame.loc[shown])
            if found is not None and has_spread(*found):
                set_limits(*fitted_limits(*found))
                if metric == y_metric:
                    panels.append(Panel(metric, tuple(float(v) for v in get_limits()), found))
        figure.tight_layout()
    return _svg(figure, "scatter", f"identity ({x_metric}) against relation accuracy ({y_metric}) per method", panels)


def _err(mean: float, low: float, high: float) -> list[list[float]]:
    if not (np.isfinite(low) and np.isfinite(high)):
        return [[0.0], [0.0]]
    return [[mean - float(low)], [float(high) - mean]]


def first_present(candidates: Sequence[str], available: Sequence[str]) -> str | None:
    """The first of ``candidates`` that is in ``available``."""
    return next((name for name in candidates if name in available), None)
