"""A self-contained HTML report of one or more runs (``relbench report RUN_DIR...``).

The page (``index.html``) has inline CSS, inline SVG plots and one small inline script (the
failure filters and the layout-box toggle); it fetches nothing from the network and links the runs'
own images by relative path, so the report folder works when moved together with the run folder
(or, ``self_contained``, embeds downscaled copies: ``reports.pictures``). A Content-Security-Policy in the page
enforces this: only that one script (by its hash) may run, and images load only from local files
or the page's own origin. Every string that comes from run files (prompts, names, ids, settings, relation
names) goes through ``html.escape``; plot labels are escaped by matplotlib's SVG writer.

Where things go (``build_report``):

* one run, no ``output``: ``<run>/report/index.html`` and ``<run>/leaderboard.csv``;
* several runs (merged like ``relbench leaderboard``) and no ``output``: the page in the first
  run's ``report/``, the merged leaderboard beside it (``report/leaderboard.csv``), so the first
  run's own ``leaderboard.csv`` is not overwritten with other runs' rows;
* ``output`` given: ``<output>/index.html`` and ``<output>/leaderboard.csv``.

``formats`` (``csv``, ``parquet``) also writes the report's tables next to the page:
``samples``, ``leaderboard``, ``per_relation``, ``per_category`` (``.csv`` / ``.parquet``).

Sections, in reading order, sized so that at 1400 px nothing scrolls sideways and the first case
is within three screens: leaderboard, one table per metric group (``reports.groups``; mean, 95% CI
and n cases per cell, direction arrow, best per column under the rule of ``stats``; rows sorted by
the headline metric, named on the page with why it is that one; the case view and any metric whose
configurations scored different cases; a warning when two configurations' CIs overlap on the
headline metric, see ``stats``); plots (``reports.plots``: dot-and-whisker per group, the headline
per relation, identity against relation); folded in ``<details>``: per-relation and per-category
breakdowns, the runs' settings and provenance; the paper-comparable table (full-profile
configurations only); then every case: the subjects' reference thumbnails and the prompt, every
configuration's images (layout boxes on a toggle; headline score, judge verdicts and failure flags
under each image, all scores folded; checkboxes show only the cases with a failure, see
``tables.FLAG_RULES``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from relbench.atomic import atomic_path, atomic_write_text
from relbench.errors import RelbenchError, output_errors
from relbench.reports import plots
from relbench.reports.judge_check import judge_check_section
from relbench.reports.groups import MetricGroup, metric_groups
from relbench.reports.pictures import REFERENCE_HEIGHT, THUMBNAIL_WIDTH, Layouts, Pictures, case_layouts, thumbnail_width
from relbench.reports.leaderboard import (
    RunSet, best_mask, board_notes, build_leaderboard, case_set_note, load_runs, save_csv,
)
from relbench.reports.stats import (
    BOOTSTRAP_METHOD, COMMON, CONFIDENCE, DIFFER, GROUP_COLUMNS, MIN_CASES_FOR_BEST, N_RESAMPLES, SEED, Headline,
    breakdown, computed_metrics, overlapping_pairs,
)
from relbench.reports.tables import (
    FAILURE_FLAGS, FLAG_RULES, VERDICT_KEY, detail_number, failure_flags, judge_metrics,
    metric_columns,
)

REPORT_DIR = "report"
PAGE = "index.html"
LEADERBOARD_CSV = "leaderboard.csv"
FORMATS = ("csv", "parquet")
MAX_LISTED_PAIRS = 5  # overlapping pairs named in the warning; the rest are counted

TINY_BANNER = (
    "Tiny profile: every score on this page comes from small models with random weights. "
    "The numbers only show that the pipeline runs; they are not meaningful and must not be compared or published."
)
NOT_COMPARABLE = "settings may differ; not directly comparable"

# The paper's numbers, copied from the DreamRelation project page table (multi-object columns).
# Scores x100.
PAPER_SOURCE = "DreamRelation (CVPR 2025, arXiv 2410.23280), project page table, multi-object columns"
PAPER_COLUMNS: tuple[tuple[str, str], ...] = (("CLIP-T", "clip_t"), ("CLIP-R", "clip_r"), ("CLIP-I", "clip_i"), ("DINO", "dino"))
PAPER_RESULTS: tuple[tuple[str, float, float, float, float], ...] = (
    ("DreamBooth (SDXL)", 24.3, 16.2, 67.8, 57.2),
    ("Custom Diffusion", 20.1, 15.4, 64.7, 55.3),
    ("Cones-V2", 21.3, 15.2, 64.3, 54.2),
    ("AnyDoor", 21.6, 14.9, 69.7, 59.8),
    ("SSR-Encoder", 24.2, 14.6, 72.1, 56.2),
    ("MS-Diffusion", 26.9, 18.9, 73.8, 58.8),
    ("DreamRelation", 28.9, 20.4, 75.4, 62.1),
)

# Metrics the identity-vs-relation scatter plots, in order of preference (the first present wins):
# per-subject identity (crops of the detected subjects) before whole-image similarity; a relation
# judge metric (tables.judge_metrics, e.g. relation_vqa) comes before the named relation metrics.
IDENTITY_METRICS: tuple[str, ...] = ("identity_dino", "identity_clip", "dino", "clip_i")
RELATION_METRICS: tuple[str, ...] = ("clip_r",)

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; font-size: 15px; }
h1 { margin-bottom: 0.2rem; font-size: 1.6rem; }
h2 { margin: 1.3rem 0 0.4rem; }
h3 { margin: 0.2rem 0; font-size: 1rem; }
nav { margin: 0.3rem 0 0.8rem; } nav a { margin-right: 0.9rem; }
table { border-collapse: collapse; margin: 0.3rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.45rem; vertical-align: top; text-align: left; }
th { background: #f3f3f3; font-weight: 600; }
th.headline { background: #dde8f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: bold; background: #e3f5e1; }
.ci, .n { color: #555; font-weight: normal; font-size: 0.8em; }
code, .mono { font-family: ui-monospace, monospace; font-size: 0.9em; }
.banner { border: 3px solid #c00; background: #fff0f0; color: #900; padding: 0.6rem 1rem;
          font-size: 1.05rem; font-weight: bold; margin: 0.8rem 0; }
.warning { border: 2px solid #b80; background: #fff8e0; color: #640; padding: 0.5rem 1rem; margin: 0.8rem 0; }
.settings { margin: 0; padding: 0; list-style: none; }
.muted { color: #777; font-size: 0.85em; }
.groups { display: flex; flex-wrap: wrap; gap: 0 1.5rem; align-items: flex-start; }
.groups > div { max-width: 100%%; overflow-x: auto; }
.groups h3 { margin: 0.5rem 0 0.2rem; }
details.section { margin: 0.6rem 0; border-top: 1px solid #ddd; padding-top: 0.3rem; }
details.section > summary { cursor: pointer; }
details.section > summary h2 { display: inline; font-size: 1.2rem; margin: 0; }
tr.paper td { color: #555; }
.case { border-top: 1px solid #ccc; padding: 0.6rem 0 0.4rem; }
.case[hidden] { display: none; }
.case-head { display: flex; gap: 1rem; align-items: flex-start; margin-bottom: 0.4rem; }
.case-text { max-width: 34rem; }
.prompt { font-size: 1.05em; font-weight: 600; }
.refs { display: flex; gap: 0.5rem; }
.ref { font-size: 0.75em; text-align: center; }
.ref img { display: block; height: %dpx; width: auto; border: 3px solid; }
.cells { display: flex; flex-wrap: wrap; gap: 0.5rem 0.8rem; }
.cell > .who { font-size: 0.8em; font-weight: 600; margin-bottom: 0.15rem; }
figure { display: inline-block; margin: 0 0.3rem 0.3rem 0; width: %dpx; vertical-align: top; }
.shot { position: relative; display: block; line-height: 0; }
.shot img { display: block; border: 1px solid #ddd; max-width: 100%%; height: auto; }
.box { display: none; position: absolute; border: 2px solid; box-sizing: border-box; pointer-events: none; }
body.boxes .box { display: block; }
figcaption { font-size: 0.78em; }
figcaption details summary { cursor: pointer; color: #555; }
.flag { color: #b00; font-weight: bold; }
.missing { width: %dpx; height: %dpx; border: 1px dashed #c00; color: #c00; font-size: 0.8em; line-height: 1.2; }
#filters { margin: 0.5rem 0 1rem; }
.plots { display: flex; flex-wrap: wrap; gap: 0.5rem 1.5rem; align-items: flex-start; }
.plots figure.chart { width: auto; max-width: 100%%; margin: 0; }
.plots figure.chart figcaption { font-size: 0.85em; font-weight: 600; }
.legend { font-size: 0.85em; margin: 0.2rem 0; } .key { margin-right: 1rem; white-space: nowrap; }
.swatch { display: inline-block; width: 0.75em; height: 0.75em; border-radius: 50%%; margin-right: 0.3em; vertical-align: middle; }
svg.plot { max-width: 100%%; height: auto; display: block; margin: 0.3rem 0 0.6rem; }
""" % (REFERENCE_HEIGHT, THUMBNAIL_WIDTH, THUMBNAIL_WIDTH, THUMBNAIL_WIDTH) + plots.SVG_CSS

# Colours of the layout boxes and of the matching reference thumbnails' borders, by subject position.
BOX_COLORS: tuple[str, ...] = ("#e6194b", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")

# The failure filters and the layout-box toggle. Cases are <div class="case" data-flags="flag ...">;
# the page's URL may preselect flags with "#only=flag,flag" (a link to the failures; also how the
# browser test drives it) and the boxes with "boxes" anywhere in the fragment ("#boxes").
SCRIPT = """
(function () {
  var boxes = Array.prototype.slice.call(document.querySelectorAll('#filters input[name=flag]'));
  var rows = Array.prototype.slice.call(document.querySelectorAll('div.case'));
  var status = document.getElementById('filter-status');
  var layout = document.getElementById('show-boxes');
  function apply() {
    var on = boxes.filter(function (b) { return b.checked; }).map(function (b) { return b.value; });
    var shown = 0;
    rows.forEach(function (row) {
      var flags = (row.getAttribute('data-flags') || '').split(' ');
      var show = on.length === 0 || on.some(function (f) { return flags.indexOf(f) >= 0; });
      row.hidden = !show;
      if (show) { shown += 1; }
    });
    status.textContent = 'showing ' + shown + ' of ' + rows.length + ' cases';
    document.body.setAttribute('data-filter', on.join(' '));
  }
  function showBoxes() { document.body.classList.toggle('boxes', layout.checked); }
  var wanted = /only=([a-z_,]+)/.exec(window.location.hash);
  if (wanted) {
    wanted[1].split(',').forEach(function (flag) {
      boxes.forEach(function (b) { if (b.value === flag && !b.disabled) { b.checked = true; } });
    });
  }
  if (/boxes/.test(window.location.hash)) { layout.checked = true; }
  boxes.forEach(function (b) { b.addEventListener('change', apply); });
  layout.addEventListener('change', showBoxes);
  apply();
  showBoxes();
  document.body.setAttribute('data-ready', 'yes');
}());
"""
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
CSP = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    f"script-src '{SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)

Key = tuple[Any, ...]  # a configuration: the values of GROUP_COLUMNS (NaN as None)


def _e(value: Any) -> str:
    """Escaped text of any value from a run file."""
    if isinstance(value, str):
        return escape(value, quote=True)
    return escape(json.dumps(value, sort_keys=True, default=str), quote=True)


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any) -> str:
    return "&ndash;" if _is_missing(value) else f"{float(value):.4g}"


def _raised(value: Any) -> bool:
    """A flag value from a nullable boolean column: True only when raised (NA is not)."""
    return not _is_missing(value) and bool(value)


def _key(record: dict[str, Any]) -> Key:
    return tuple(None if _is_missing(record[c]) else record[c] for c in GROUP_COLUMNS)


def _arrow(direction: bool | None) -> str:
    if direction is None:
        return ""
    return ' <span title="higher is better">&uarr;</span>' if direction else ' <span title="lower is better">&darr;</span>'


def parse_formats(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"csv,parquet"`` (or a list) -> the export formats; RelbenchError for anything else."""
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    formats = tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
    for item in formats:
        if item not in FORMATS:
            raise RelbenchError(f"--format: expected csv, parquet or csv,parquet; got {item!r}")
    return formats


@dataclass
class ReportData:
    """Everything the page shows, computed once."""

    run_set: RunSet
    summary: pd.DataFrame  # stats.metric_summary
    table: pd.DataFrame  # the leaderboard
    per_relation: pd.DataFrame
    per_category: pd.DataFrame
    flags: pd.DataFrame  # tables.failure_flags, aligned with the samples
    metrics: list[str]
    directions: dict[str, bool | None]
    headline: str | None
    labels: dict[Key, str] = field(default_factory=dict)
    headline_reason: str = ""  # why ``headline`` is that metric (or none)
    cases: str = COMMON  # the case view (stats.CASE_VIEWS)
    groups: list[MetricGroup] = field(default_factory=list)  # the metrics as the page groups them
    layouts: Layouts | None = None  # the cases' subjects' reference files and layout boxes

    def label_order(self) -> list[str]:
        """Configuration labels in leaderboard order (best first on the headline)."""
        return [self.labels.get(_key(r), str(r["method"])) for r in self.table.to_dict("records")]

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Per metric, its declared range from run.json (``metrics.<name>.range``), where numeric."""
        out = {}
        for name, entry in self.run_set.metric_info().items():
            bounds = entry.get("range")
            if isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
                out[name] = (float(bounds[0]), float(bounds[1]))
        return out

    @property
    def samples(self) -> pd.DataFrame:
        return self.run_set.samples


def config_labels(table: pd.DataFrame) -> dict[Key, str]:
    """Display name per configuration: the method, its hash when the method has several settings,
    and benchmark and profile when the table mixes several."""
    records = table.to_dict("records")
    hashes: dict[str, set[str]] = {}
    for record in records:
        hashes.setdefault(record["method"], set()).add(record["settings_hash"])
    contexts = {(r["benchmark"], r["benchmark_version"], r["profile"]) for r in records}
    labels: dict[Key, str] = {}
    for record in records:
        label = str(record["method"])
        if len(hashes[record["method"]]) > 1:
            label += f"@{str(record['settings_hash'])[:8]}"
        if len(contexts) > 1:
            label += f" ({record['benchmark']} v{record['benchmark_version']}, {record['profile']})"
        labels[_key(record)] = label
    return labels


def _with_labels(frame: pd.DataFrame, labels: dict[Key, str]) -> pd.DataFrame:
    return frame.assign(label=[labels.get(_key(r), str(r["method"])) for r in frame.to_dict("records")])


def collect(run_dirs: Sequence[str | Path], headline: str | None = None, cases: str = COMMON) -> ReportData:
    """Read and merge the runs and compute every table the page and the exports show, in the case
    view ``cases``, sorted by ``headline`` (``--headline``; default: ``stats.choose_headline``)."""
    run_set = load_runs(run_dirs)
    samples = run_set.samples
    metrics = metric_columns(samples)
    board = build_leaderboard(run_set, headline, cases)
    judge = judge_metrics(samples) if not samples.empty else []
    return ReportData(
        run_set=run_set,
        summary=board.summary,
        table=board.table,
        per_relation=breakdown(samples, "relation", metrics, cases=cases),
        per_category=breakdown(samples, "category", metrics, cases=cases),
        flags=failure_flags(samples),
        metrics=metrics,
        directions=run_set.directions(),
        headline=board.headline.metric,
        labels=config_labels(board.table),
        headline_reason=board.headline.reason,
        cases=cases,
        groups=metric_groups(computed_metrics(samples), judge, board.headline.metric),
        layouts=case_layouts(run_set.runs),
    )


# --------------------------------------------------------------------------------------------
# Sections


def _ci_text(low: Any, high: Any) -> str:
    if _is_missing(low) or _is_missing(high):
        return ""
    return f' <span class="ci">[{_fmt(low)}, {_fmt(high)}]</span>'


def _overlap_warning(data: ReportData) -> str:
    if data.headline is None:
        return ""
    summary = _with_labels(data.summary, data.labels)
    pairs = overlapping_pairs(summary, data.headline)
    if not pairs:
        return ""
    names = "; ".join(f"{_e(a['label'])} and {_e(b['label'])}" for a, b in pairs[:MAX_LISTED_PAIRS])
    if len(pairs) > MAX_LISTED_PAIRS:
        names += f"; and {len(pairs) - MAX_LISTED_PAIRS} more pairs"
    return (
        f'<div class="warning" role="alert" id="ci-overlap"><strong>Confidence intervals overlap</strong> on the headline '
        f"metric <code>{_e(data.headline)}</code>: {names}. The order of these rows may be noise; evaluate more cases "
        "(or seeds) before calling one better.</div>"
    )


def _judge_failures_note(data: ReportData) -> str:
    """How many judge answers failed (those rows' judge metrics are NaN until a rerun retries them)."""
    from relbench.metrics.relation_judge import count_failed_questions, failure_line

    details = data.samples["metric_details"] if "metric_details" in data.samples.columns else []
    line = failure_line(count_failed_questions(d for d in details if isinstance(d, dict)),
                        "their judge metrics are NaN; run the same relbench evaluate command again to retry them")
    return f'<div class="warning" role="alert" id="judge-failures">{_e(line)}</div>' if line else ""


HEADLINE_CLASS = ' class="headline" title="the headline metric"'


def _case_set_flag(table: pd.DataFrame, metric: str) -> str:
    """The header's mark for a metric whose configurations scored different cases."""
    sets = set(table[f"{metric}_case_set"])
    if DIFFER in sets:
        return ' <span class="flag" title="means over different cases; not comparable">(different cases)</span>'
    if COMMON in sets:
        return ' <span class="muted" title="means over the cases all configurations scored">(common cases)</span>'
    return ""


def _headline_text(data: ReportData) -> str:
    if data.headline is None:
        return f"No headline metric ({_e(data.headline_reason)}); rows sorted by method."
    return (f"Headline metric: <code>{_e(data.headline)}</code> ({_e(data.headline_reason)}); rows sorted by it, "
            "best first (<code>--headline METRIC</code> picks another).")


def _view_text(data: ReportData) -> str:
    view = (
        "common cases (where configurations scored different cases, a column's means are over the cases all of them "
        "scored; <code>--all-cases</code>: each one's own)"
        if data.cases == COMMON else
        "all cases (<code>--all-cases</code>): every mean is over the configuration's own cases; a column marked "
        "(different cases) compares different cases and has no best"
    )
    note = case_set_note(data.summary)
    return f"Case view: {view}." + (f' <span id="case-sets">{_e(note)}.</span>' if note else "")


def _lb_cell(record: dict[str, Any], metric: str, best: bool, n_nan: int) -> str:
    note = f' <span class="muted">({n_nan} n/a)</span>' if n_nan else ""
    return (
        f'<td class="{"num best" if best else "num"}"><span class="mean">{_fmt(record[metric])}</span>'
        f"{_ci_text(record[f'{metric}_ci_low'], record[f'{metric}_ci_high'])}"
        f' <span class="n">n={int(record[f"{metric}_n"])}</span>{note}</td>'
    )


def _metric_head(data: ReportData, metric: str) -> str:
    cls = HEADLINE_CLASS if metric == data.headline else ""
    return f"<th{cls}>{_e(metric)}{_arrow(data.directions.get(metric))}{_case_set_flag(data.table, metric)}</th>"


def _leaderboard_section(data: ReportData, leaderboard_link: str) -> str:
    download = f' download="{LEADERBOARD_CSV}"' if leaderboard_link.startswith("data:") else ""
    table = data.table
    nan_counts = {(_key(r), r["metric"]): r["n_nan"] for r in data.summary.to_dict("records")}
    records = table.to_dict("records")
    parts = [
        '<h2 id="leaderboard">Leaderboard</h2>',
        f'<p id="headline">{_headline_text(data)}</p>',
        f'<p id="case-view">{_view_text(data)} <span class="muted">Every column, one row per configuration: '
        f'<a href="{_e(leaderboard_link)}"{download}>{LEADERBOARD_CSV}</a>.</span></p>',
        f'<details class="muted"><summary>How to read these tables</summary>Each cell: the mean over cases (seeds '
        f"averaged within a case first), its bootstrap {CONFIDENCE:.0%} confidence interval over cases [low, high] "
        f"({BOOTSTRAP_METHOD} method, {N_RESAMPLES} resamples, seed {SEED}) and n, the number of cases it is over; "
        "best mean per column in bold, among the configurations of one benchmark and profile scored on the same cases "
        f"with n &ge; {MIN_CASES_FOR_BEST} (so that a CI exists); &uarr; higher is better, &darr; lower is better; "
        "&ldquo;n/a&rdquo;: images the metric scored without a value (skipped). Metrics are grouped; every table "
        "lists the configurations in the same order, sorted by the headline metric. Images, scored images, cases and "
        'settings hashes per configuration: <a href="#runs">Runs and settings</a>.</details>',
        '<div class="groups">',
    ]
    for group in data.groups or [MetricGroup("all", "Metrics", ())]:
        best = {m: best_mask(table, m, data.directions.get(m)).tolist() for m in group.metrics}
        head = "".join(_metric_head(data, m) for m in group.metrics)
        rows = []
        for position, record in enumerate(records):
            cells = "".join(_lb_cell(record, m, best[m][position], nan_counts.get((_key(record), m), 0)) for m in group.metrics)
            rows.append(f"<tr><td>{_e(data.labels.get(_key(record), record['method']))}</td>{cells}</tr>")
        parts.append(
            f'<div id="group-{group.key}"><h3>{_e(group.title)}</h3>'
            f'<table class="leaderboard group-{group.key}"><tr><th>method</th>{head}</tr>'
            + "".join(rows) + "</table></div>"
        )
    parts.append("</div>")
    grouped = {m for group in data.groups for m in group.metrics}
    empty = [m for m in data.metrics if m not in grouped]
    if empty:
        parts.append(f'<p class="muted" id="no-values">No values in these runs (not computed, or every image n/a): '
                     f"{', '.join(_e(m) for m in empty)}.</p>")
    return "\n".join(parts)


def _configurations_table(data: ReportData) -> str:
    """Per configuration: its settings hash and how many images it has, scored, over how many cases."""
    rows = "".join(
        f"<tr><td>{_e(data.labels.get(_key(r), r['method']))}</td><td><code>{_e(r['settings_hash'])}</code></td>"
        f'<td class="num">{int(r["n_images"])}</td><td class="num">{int(r["n_scored"])}</td><td class="num">{int(r["n_cases"])}</td></tr>'
        for r in data.table.to_dict("records")
    )
    return ('<h3>Configurations</h3><table class="configurations"><tr><th>method</th><th>settings hash</th><th>images</th>'
            f"<th>scored</th><th>cases</th></tr>{rows}</table>")


def _chart(svg: str, caption: str) -> str:
    return f'<figure class="chart"><figcaption>{caption}</figcaption>{svg}</figure>'


def _plots_section(data: ReportData) -> str:
    if not data.metrics or data.summary.empty:
        return ""
    summary = _with_labels(data.summary, data.labels)
    labels = data.label_order()
    ranges = data.ranges()
    colors = plots.method_colors(labels)
    legend = "".join(f'<span class="key"><span class="swatch" style="background:{colors[label]}"></span>{_e(label)}</span>'
                     for label in labels)
    parts = ['<h2 id="plots">Plots</h2>',
             '<p class="muted">Mean (dot) and 95% confidence interval (whisker) per configuration, left to right in '
             "leaderboard order; each axis is fitted to its metric's data (padded by 10% of its range): read the axis, "
             "not the height.</p>", f'<p class="legend">{legend}</p>', '<div class="plots">']
    flat: list[str] = []
    for group in data.groups:
        svg = plots.metric_dots(summary, group.metrics, labels, data.directions, ranges, f"dots-{group.key}", group.title)
        if svg:
            parts.append(_chart(svg, _e(group.title)))
        flat += plots.spreadless(summary, group.metrics)
    heat = plots.relation_heatmap(_with_labels(data.per_relation, data.labels), data.headline, labels)
    if heat:
        parts.append(_chart(heat, f"Headline metric per relation: {_e(data.headline)}"))
    with_values = set(data.summary.loc[data.summary["mean"].notna(), "metric"])
    identity = plots.first_present(IDENTITY_METRICS, [m for m in data.metrics if m in with_values])
    # A relation metric that varies (a constant one makes a flat line), the headline first when it is one.
    judged = [*judge_metrics(data.samples), *RELATION_METRICS]
    flat_anywhere = set(plots.spreadless(summary, data.metrics))
    relation = plots.first_present(
        [*([data.headline] if data.headline in judged else []), *judged],
        [m for m in data.metrics if m in with_values and m not in flat_anywhere],
    )
    scatter = plots.identity_relation_scatter(summary, identity, relation, labels)
    if scatter:
        parts.append(_chart(scatter, "Identity against relation"))
    parts.append("</div>")
    notes = []
    if flat:
        notes.append(f"Not plotted, the same value for every configuration and case: {', '.join(_e(m) for m in flat)}.")
    if not heat:
        notes.append("No heat map: the headline metric has no per-relation values, or the same value in every cell.")
    if not scatter:
        notes.append(
            "No identity-against-relation scatter: it needs an identity metric "
            f"({', '.join(IDENTITY_METRICS)}) and a relation metric (a relation judge, or {', '.join(RELATION_METRICS)}) "
            "with values."
        )
    parts += [f'<p class="muted">{note}</p>' for note in notes]
    return "\n".join(parts)


def _paper_scale(entry: dict[str, Any]) -> float:
    """x100 for a metric stored as a plain cosine (range within [-1, 1]); relbench's CLIP/DINO are x100 already."""
    bounds = entry.get("range") or []
    numbers = [abs(float(b)) for b in bounds if isinstance(b, (int, float)) and not isinstance(b, bool)]
    return 100.0 if numbers and max(numbers) <= 1.0 else 1.0


def _paper_section(data: ReportData) -> str:
    """The paper's numbers beside the full-profile configurations' (none in a tiny-only report: its
    random numbers next to the paper's would invite a comparison, labelled or not)."""
    full = [r for r in data.table.to_dict("records") if r["profile"] == "full"]
    if not full:
        return ""
    info = data.run_set.metric_info()
    head = "".join(f"<th>{name}</th>" for name, _ in PAPER_COLUMNS)
    parts = [
        f'<p class="warning"><strong>{NOT_COMPARABLE.capitalize()}.</strong> The paper does not publish its CLIP '
        "variant, pooling, prompts or image counts; these runs' settings are listed below. Scores x100.</p>",
        f'<table class="paper"><tr><th>source</th><th>method</th>{head}</tr>',
    ]
    for name, *values in PAPER_RESULTS:
        cells = "".join(f'<td class="num">{value:.1f}</td>' for value in values)
        parts.append(f'<tr class="paper"><td>paper</td><td>{_e(name)}</td>{cells}</tr>')
    for record in full:
        cells = []
        for _, metric in PAPER_COLUMNS:
            value = record.get(metric)
            scaled = None if _is_missing(value) else float(value) * _paper_scale(info.get(metric, {}))
            cells.append(f'<td class="num">{"&ndash;" if scaled is None else f"{scaled:.1f}"}</td>')
        label = data.labels.get(_key(record), record["method"])
        parts.append(f'<tr><td>this report</td><td>{_e(label)} <span class="muted">({_e(record["profile"])})</span></td>{"".join(cells)}</tr>')
    parts.append(f'</table><p class="muted">Source: {_e(PAPER_SOURCE)}.</p>')
    return _collapsed("paper", "Compared with the paper's numbers",
                      f"CLIP-T, CLIP-R, CLIP-I, DINO of {len(full)} full-profile configuration{'s' if len(full) > 1 else ''} "
                      f"beside the paper's {len(PAPER_RESULTS)} methods; {NOT_COMPARABLE}", "\n".join(parts))


def _collapsed(anchor: str, title: str, summary: str, body: str, open_: bool = False) -> str:
    """A section folded into ``<details>``: its heading and a one-line summary stay visible."""
    return (
        f'<details class="section" id="{anchor}"{" open" if open_ else ""}><summary><h2>{title}</h2> '
        f'<span class="muted">{summary}</span></summary>\n{body}\n</details>'
    )


def _breakdown_section(data: ReportData, frame: pd.DataFrame, by: str, title: str, anchor: str) -> str:
    if frame.empty:
        return ""
    key_columns = ["relation", "relation_kind"] if by == "relation" else ["category"]
    head_keys = "".join(f"<th>{_e(column.replace('_', ' '))}</th>" for column in key_columns)
    parts = [
        '<p class="muted">Mean over cases (seeds averaged first) per method and n, the cases it is over, in the '
        "leaderboard's case view; a case with subjects of several categories counts in each.</p>" if by == "category" else
        '<p class="muted">Mean over cases (seeds averaged first) per method and n, the cases it is over, in the '
        "leaderboard's case view.</p>",
        '<div class="groups">',
    ]
    records = frame.to_dict("records")
    for group in data.groups:
        head = "".join(f"<th>{_e(metric)}{_arrow(data.directions.get(metric))}</th>" for metric in group.metrics)
        rows = []
        for record in records:
            keys = "".join(f"<td>{'&ndash;' if _is_missing(record[c]) else _e(record[c])}</td>" for c in key_columns)
            values = "".join(f'<td class="num">{_fmt(record[m])} <span class="n">n={int(record[f"{m}_n"])}</span></td>'
                             for m in group.metrics)
            rows.append(
                f"<tr>{keys}<td>{_e(data.labels.get(_key(record), record['method']))}</td>"
                f'<td class="num">{int(record["n_cases"])}</td>{values}</tr>'
            )
        parts.append(
            f'<div><h3>{_e(group.title)}</h3><table class="breakdown {anchor} group-{group.key}">'
            f"<tr>{head_keys}<th>method</th><th>cases</th>{head}</tr>" + "".join(rows) + "</table></div>"
        )
    parts.append("</div>")
    n_keys = len({tuple(str(r[c]) for c in key_columns) for r in records})
    return _collapsed(anchor, title, f"{n_keys} {anchor} &times; {len(data.labels)} configurations, one table per metric group",
                      "\n".join(parts))


def _settings_list(settings: dict[str, Any]) -> str:
    if not settings:
        return '<span class="muted">none</span>'
    items = "".join(f"<li><code>{_e(key)}</code>: {_e(value)}</li>" for key, value in settings.items())
    return f'<ul class="settings">{items}</ul>'


def _is_model_key(key: str) -> bool:
    return "model" in key or "revision" in key


def _run_table(run_dir: Path, info: dict[str, Any], heading: bool) -> str:
    benchmark = info.get("benchmark", {})
    n_cases = benchmark.get("n_cases", len(info.get("cases") or []))
    # The spec's path when recorded, else the digest of its contents.
    spec_label, spec = ("Spec", benchmark["spec"]) if benchmark.get("spec") else ("Spec sha256", benchmark.get("spec_sha256"))
    rows = [
        ("Benchmark", f"{_e(benchmark.get('name'))} v{_e(benchmark.get('version'))} ({_e(n_cases)} cases)"),
        (spec_label, f"<code>{_e(spec)}</code>"),
        ("Profile", _e(info.get("profile"))),
        ("Seeds", ", ".join(_e(seed) for seed in info.get("seeds", []))),
        ("Resolution", " &times; ".join(_e(side) for side in info.get("resolution", []))),
        ("Created", _e(info.get("created"))),
        ("relbench", f"{_e(info.get('relbench_version'))}, commit <code>{_e(info.get('git_commit') or 'unknown')}</code>"),
    ]
    parts = [f"<h3><code>{_e(run_dir.name)}</code></h3>" if heading else "", "<table>"]
    parts += [f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in rows]
    parts.append("</table>")
    return "".join(parts)


def _settings_section(data: ReportData) -> str:
    runs = data.run_set.runs
    parts = [_configurations_table(data), "<h3>Run" + ("s" if len(runs) > 1 else "") + "</h3>"]
    parts += [_run_table(run_dir, info, len(runs) > 1) for run_dir, info in runs]

    parts.append("<h3>Methods</h3><table><tr><th>method</th><th>settings hash</th><th>settings</th></tr>")
    seen: set[tuple[str, Any]] = set()
    for _, info in runs:
        for name, entry in info.get("methods", {}).items():
            entry = entry if isinstance(entry, dict) else {}
            if (name, entry.get("settings_hash")) in seen:
                continue
            seen.add((name, entry.get("settings_hash")))
            settings = entry.get("settings") or {}
            parts.append(
                f"<tr><td>{_e(name)}</td><td><code>{_e(entry.get('settings_hash'))}</code></td>"
                f"<td>{_settings_list(settings if isinstance(settings, dict) else {'settings': settings})}</td></tr>"
            )
    parts.append("</table>")

    parts.append(
        "<h3>Metrics</h3><table><tr><th>metric</th><th>better</th><th>range</th>"
        "<th>models</th><th>other settings</th></tr>"
    )
    for name, entry in data.run_set.metric_info().items():
        settings = entry.get("settings") or {}
        settings = settings if isinstance(settings, dict) else {"settings": settings}
        # The model the run resolved (hub id or path, revision), then what the metric itself reported.
        models = {"model": entry["model"]} if entry.get("model") else {}
        models.update({k: v for k, v in settings.items() if _is_model_key(k)})
        others = {k: v for k, v in settings.items() if not _is_model_key(k)}
        direction = data.directions.get(name)
        better = "higher" if direction else "lower" if direction is False else "?"
        value_range = " to ".join(_e(bound) for bound in entry.get("range") or [])
        parts.append(
            f"<tr><td>{_e(name)}</td><td>{better}{_arrow(direction)}</td><td>{value_range}</td>"
            f"<td>{_settings_list(models)}</td><td>{_settings_list(others)}</td></tr>"
        )
    parts.append("</table>")
    n_methods = len(seen)
    return _collapsed("runs", "Runs and settings",
                      f"{len(runs)} run{'s' if len(runs) > 1 else ''}, {n_methods} method settings, "
                      f"{len(data.run_set.metric_info())} metrics: provenance, models and every setting",
                      "\n".join(parts))


def _verdicts(details: dict[str, Any]) -> list[str]:
    """'relation shown (metric, ...)' and 'relation not shown (metric, ...)' from the judges' verdicts."""
    shown: list[str] = []
    not_shown: list[str] = []
    for name, metric_details in details.items():
        value = detail_number(metric_details.get(VERDICT_KEY)) if isinstance(metric_details, dict) else None
        if value is not None:
            (shown if value >= 0.5 else not_shown).append(_e(name))
    # The metrics that gave the verdict in a tooltip: the line stays one line under a thumbnail.
    lines = [f'<span title="{", ".join(shown)}">judge: relation shown</span>'] if shown else []
    if not_shown:
        lines.append(f'<span class="flag" title="{", ".join(not_shown)}">judge: relation not shown</span>')
    return lines


def _box_spans(layout: Any) -> str:
    """The case's layout boxes over an image (shown with the toggle), coloured per subject."""
    if layout is None:
        return ""
    spans = []
    for position, (box, subject) in enumerate(zip(layout.boxes, layout.subjects)):
        x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
        spans.append(
            f'<span class="box" title="{_e(subject)}" style="left:{100 * x0:.2f}%;top:{100 * y0:.2f}%;'
            f'width:{100 * (x1 - x0):.2f}%;height:{100 * (y1 - y0):.2f}%;border-color:{BOX_COLORS[position % len(BOX_COLORS)]}"></span>'
        )
    return "".join(spans)


def _image_cell(pictures: Pictures, sample: dict[str, Any], flags: dict[str, Any], data: ReportData, layout: Any,
                width_px: int = THUMBNAIL_WIDTH) -> str:
    image = sample["image"]
    alt = _e(f"{sample['method']} {sample['case_id']} seed {sample['seed']}")
    source = pictures.generated(Path(sample["run_dir"]) / image)
    if source is None:
        picture = f'<div class="missing" style="width:{width_px}px;height:{width_px}px">image missing: <code>{_e(image)}</code></div>'
    else:
        src, link = source
        width, height = sample.get("width"), sample.get("height")
        size = ""
        if not _is_missing(width) and not _is_missing(height) and int(width) > 0:
            size = f' height="{round(width_px * int(height) / int(width))}"'
        img = f'<img src="{_e(src)}" width="{width_px}"{size} alt="{alt}" loading="lazy">'
        inner = f'<a href="{_e(link)}">{img}</a>' if link else img
        picture = f'<span class="shot">{inner}{_box_spans(layout)}</span>'
    headline = data.headline
    lines = [f"seed {_e(sample['seed'])}"]
    if headline is not None and not _is_missing(sample[headline]):
        lines.append(f"{_e(headline)} <strong>{_fmt(sample[headline])}</strong>")
    scores = [f"{_e(metric)} {_fmt(sample[metric])}" for metric in data.metrics if not _is_missing(sample[metric])]
    details = sample.get("metric_details")
    lines += _verdicts(details if isinstance(details, dict) else {})
    raised = [flag for flag in FAILURE_FLAGS if _raised(flags.get(flag))]
    lines += [f'<span class="flag">&#9888; {_e(FAILURE_FLAGS[flag])}</span>' for flag in raised if flag != "relation_not_shown"]
    lines.append(f'<details><summary>{len(scores)} scores</summary>{"<br>".join(scores)}</details>' if scores
                 else '<span class="muted">not scored</span>')
    return (
        f'<figure data-flags="{" ".join(raised)}" style="width:{width_px}px">{picture}<figcaption>{"<br>".join(lines)}</figcaption></figure>'
    )


def _filters(data: ReportData, case_flags: dict[Key, set[str]]) -> str:
    measured = {flag: bool(data.flags[flag].notna().any()) for flag in FAILURE_FLAGS} if len(data.flags) else dict.fromkeys(FAILURE_FLAGS, False)
    boxes = []
    for flag, text in FAILURE_FLAGS.items():
        count = sum(flag in flags for flags in case_flags.values())
        if measured[flag]:
            boxes.append(f'<label><input type="checkbox" name="flag" value="{flag}"> {_e(text)} ({count} cases)</label>')
        else:
            boxes.append(f'<label class="muted"><input type="checkbox" name="flag" value="{flag}" disabled> {_e(text)} (not measured)</label>')
    note = ""
    if not any(measured.values()):
        keys = ", ".join(dict.fromkeys(rule.key for rule in FLAG_RULES))
        note = (f'<p class="muted">No metric in these runs reports subject presence, confusion or a relation verdict '
                f"(detail keys {keys}); there is nothing to filter.</p>")
    return (
        '<fieldset id="filters"><legend>Show only cases where</legend>'
        + " ".join(boxes)
        + ' <span id="filter-status" class="muted"></span>'
        + ' &nbsp; <label><input type="checkbox" id="show-boxes"> show layout boxes on the images</label></fieldset>'
        + note
    )


def _references(pictures: Pictures, layout: Any) -> str:
    if layout is None:
        return ""
    items = []
    for position, (subject, path) in enumerate(zip(layout.subjects, layout.references)):
        color = BOX_COLORS[position % len(BOX_COLORS)]
        src = pictures.reference(path)
        picture = (f'<img src="{_e(src)}" alt="reference of {_e(subject)}" style="border-color:{color}">' if src else
                   f'<div class="missing" style="width:{REFERENCE_HEIGHT}px;height:{REFERENCE_HEIGHT}px">not found</div>')
        items.append(f'<div class="ref">{picture}{_e(subject)}</div>')
    return f'<div class="refs">{"".join(items)}</div>'


def _cases_section(data: ReportData, pictures: Pictures) -> str:
    samples = data.samples
    configs = [_key(r) for r in data.table.to_dict("records")]
    records = samples.assign(_position=range(len(samples))).sort_values("seed", kind="stable").to_dict("records")
    flag_records = data.flags.to_dict("records")
    by_case: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for record in records:
        by_case.setdefault((record["benchmark"], record["benchmark_version"], record["case_id"]), []).append(record)
    several_benchmarks = len({case[:2] for case in by_case}) > 1
    layouts = data.layouts or Layouts()
    width_px = thumbnail_width(int(samples["seed"].nunique()) if len(samples) else 1)
    rows = []
    case_flags: dict[Key, set[str]] = {}
    for case, case_samples in by_case.items():
        first = case_samples[0]
        layout = layouts.get(*case)
        flags = {flag for r in case_samples for flag in FAILURE_FLAGS if _raised(flag_records[r["_position"]][flag])}
        case_flags[case] = flags
        subjects = ", ".join(_e(subject) for subject in first["subjects"])
        kind = f" ({_e(first['relation_kind'])})" if first["relation_kind"] else ""
        where = f"{_e(case[0])} v{_e(case[1])} &middot; " if several_benchmarks else ""
        cells = []
        for key in configs:
            mine = [r for r in case_samples if _key(r) == key]
            if not mine:
                continue
            figures = "".join(_image_cell(pictures, r, flag_records[r["_position"]], data, layout, width_px) for r in mine)
            cells.append(f'<div class="cell"><div class="who">{_e(data.labels.get(key, key[0]))}</div>{figures}</div>')
        rows.append(
            f'<div class="case" data-flags="{" ".join(sorted(flags))}"><div class="case-head">{_references(pictures, layout)}'
            f'<div class="case-text"><div class="prompt">{_e(first["prompt"] or "")}</div>'
            f'<span class="muted">{where}<code>{_e(first["case_id"])}</code> &middot; relation: {_e(first["relation"] or "")}{kind}'
            f" &middot; subjects: {subjects}</span></div></div>"
            f'<div class="cells">{"".join(cells)}</div></div>'
        )
    problems = "".join(f'<p class="muted">No reference images or layout boxes: {_e(p)}.</p>' for p in layouts.problems)
    return "\n".join([
        '<h2 id="cases">Cases</h2>',
        '<p class="muted">Per case: the subjects\' reference images (border colour = their layout box), the prompt, '
        "each configuration's images with the headline score, judge verdict and failure flags (all scores fold out).</p>",
        problems,
        _filters(data, case_flags),
        *rows,
    ])


def _nav(data: ReportData, has_paper: bool) -> str:
    links = [("leaderboard", "Leaderboard"), ("plots", "Plots"), ("cases", "Cases")]
    if not data.per_relation.empty:
        links.append(("relations", "Per relation"))
    if not data.per_category.empty:
        links.append(("categories", "Per category"))
    if has_paper:
        links.append(("paper", "Paper"))
    links.append(("runs", "Runs and settings"))
    return "<nav>" + "".join(f'<a href="#{anchor}">{text}</a>' for anchor, text in links) + "</nav>"


def _partial_warning(partial: Sequence[str]) -> str:
    """Runs a sweep's jobs are still filling: the page shows their done rows only."""
    if not partial:
        return ""
    items = "".join(f"<li>{_e(line.removeprefix('partial: '))}</li>" for line in partial)
    return (f'<div class="warning" role="alert" id="partial"><strong>Runs still filling</strong> (jobs still running or '
            f"stopped part-way): every number on this page is over their done rows only.<ul>{items}</ul></div>")


def render_report(data: ReportData, page_dir: Path, leaderboard_link: str, pictures: Pictures | None = None,
                  partial: Sequence[str] = ()) -> str:
    """The report page as a string; image and CSV links are relative to ``page_dir``. ``pictures``:
    where the case grid's pictures come from (default: linked files, ``Pictures(page_dir)``).
    ``partial``: a line per run still filling (``relbench.sweep_launch.partial_notes``)."""
    pictures = pictures if pictures is not None else Pictures(page_dir)
    runs = data.run_set.runs
    samples = data.samples
    benchmarks = ", ".join(dict.fromkeys(f"{info.get('benchmark', {}).get('name')} v{info.get('benchmark', {}).get('version')}" for _, info in runs))
    profiles = ", ".join(dict.fromkeys(str(info.get("profile")) for _, info in runs))
    tiny = any(info.get("profile") == "tiny" for _, info in runs) or bool((samples["profile"] == "tiny").any())
    title = f"relbench report: {benchmarks} ({profiles})"
    directories = ", ".join(f"<code>{_e(run_dir.name)}</code>" for run_dir, _ in runs)
    paper = _paper_section(data)
    no_paper = ('<p class="muted" id="no-paper">The paper\'s table is shown for full-profile runs only (tiny-profile '
                "numbers beside the paper's would invite a comparison they cannot support).</p>")
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">Run director{"ies" if len(runs) > 1 else "y"}: {directories}</p>',
        _nav(data, bool(paper)),
        f'<div class="banner" role="alert">{_e(TINY_BANNER)}</div>' if tiny else "",
        _partial_warning(partial),
        _overlap_warning(data),
        _judge_failures_note(data),
        _leaderboard_section(data, leaderboard_link),
        _plots_section(data),
        _breakdown_section(data, data.per_relation, "relation", "Per relation", "relations"),
        judge_check_section(data.run_set.metric_info()),
        _breakdown_section(data, data.per_category, "category", "Per subject category", "categories"),
        paper or (no_paper if len(data.table) else ""),
        _settings_section(data),
        _cases_section(data, pictures),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------------------------
# Files


def samples_for_export(samples: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """The samples table with list/dict columns as JSON text and one ``flag_<name>`` column per flag."""
    table = samples.copy()
    for column in ("subjects", "subject_categories", "metric_details"):
        table[column] = [json.dumps(list(v) if isinstance(v, tuple) else v, sort_keys=True, default=str) for v in table[column]]
    for flag in FAILURE_FLAGS:
        table[f"flag_{flag}"] = flags[flag].array  # nullable booleans: NA where no metric measured it
    return table


def export_tables(directory: Path, tables: dict[str, pd.DataFrame], formats: Sequence[str]) -> list[Path]:
    """Write each table as ``<directory>/<name>.csv`` and/or ``.parquet``; returns the paths."""
    written: list[Path] = []
    for fmt in formats:
        if fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise RelbenchError("--format parquet: needs pyarrow (pip install 'relbench[parquet]')") from None
        for name, table in tables.items():
            path = directory / f"{name}.{fmt}"
            if fmt == "csv":
                save_csv(table, path)
            else:
                with output_errors(path), atomic_path(path) as tmp:
                    table.to_parquet(tmp, index=False)
            written.append(path)
    return written


@dataclass(frozen=True)
class ReportFiles:
    page: Path
    leaderboard: Path
    exports: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()  # lines for the command to print: the headline, differing case sets, runs still filling


def build_report(
    run_dirs: str | Path | Sequence[str | Path],
    output: str | Path | None = None,
    formats: str | Sequence[str] | None = (),
    headline: str | None = None,
    cases: str = COMMON,
    self_contained: bool = False,
) -> ReportFiles:
    """Write the report of one or more runs (locations in the module docstring); ``headline`` and
    ``cases`` as ``--headline`` and ``--common-cases/--all-cases``; ``self_contained``
    (``--self-contained``): every picture embedded, downscaled (``reports.pictures``)."""
    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    formats = parse_formats(formats)
    data = collect(dirs, headline, cases)
    page_dir = Path(output) if output is not None else dirs[0] / REPORT_DIR
    if page_dir.exists() and not page_dir.is_dir():
        raise RelbenchError(f"{page_dir}: --output exists and is not a directory")
    with output_errors(page_dir):  # a full disk or a folder that cannot be written: one line
        page_dir.mkdir(parents=True, exist_ok=True)
    board = dirs[0] / LEADERBOARD_CSV if output is None and len(dirs) == 1 else page_dir / LEADERBOARD_CSV
    save_csv(data.table, board)
    page = page_dir / PAGE
    link = quote(Path(os.path.relpath(board.resolve(), page_dir.resolve())).as_posix(), safe="/")
    if self_contained:  # the CSV travels inside the page too
        link = "data:text/csv;base64," + base64.b64encode(board.read_bytes()).decode("ascii")
    pictures = Pictures(page_dir, self_contained)
    from relbench.sweep_launch import partial_notes

    partial = partial_notes(dirs)
    with output_errors(page):
        atomic_write_text(page, render_report(data, page_dir, link, pictures, partial))
    exports = export_tables(page_dir, {
        "samples": samples_for_export(data.samples, data.flags),
        "leaderboard": data.table,
        "per_relation": data.per_relation,
        "per_category": data.per_category,
    }, formats)
    notes = [*board_notes(Headline(data.headline, data.headline_reason), data.summary), *partial]
    return ReportFiles(page, board, tuple(exports), tuple(notes))
