"""A self-contained HTML report of one run: ``<run_dir>/report/index.html``.

The page has inline CSS and no scripts or network resources; it links the run's own images by
relative path (``../images/...``), so the run directory can be copied or served as it is. Every
string that comes from run files (prompts, names, ids, settings) goes through ``html.escape``.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from relbench.reports.leaderboard import LEADERBOARD_COLUMNS, leaderboard, save_csv
from relbench.reports.tables import load_run, metric_columns

REPORT_DIR = "report"
LEADERBOARD_CSV = "leaderboard.csv"
THUMBNAIL_WIDTH = 160  # px; the full-size image is one click away

TINY_BANNER = (
    "Tiny profile: every score on this page comes from small models with random weights. "
    "The numbers only show that the pipeline runs; they are not meaningful and must not be compared or published."
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { margin-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.5rem; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; background: #e3f5e1; }
code, .mono { font-family: ui-monospace, monospace; font-size: 0.9em; }
.banner { border: 3px solid #c00; background: #fff0f0; color: #900; padding: 0.8rem 1rem;
          font-size: 1.15rem; font-weight: bold; margin: 1rem 0; }
.settings { margin: 0; padding: 0; list-style: none; }
.muted { color: #777; font-size: 0.85em; }
figure { display: inline-block; margin: 0 0.4rem 0.4rem 0; width: %dpx; }
figure img { display: block; border: 1px solid #ddd; }
figcaption { font-size: 0.8em; }
.missing { width: %dpx; height: %dpx; border: 1px dashed #c00; color: #c00; font-size: 0.8em; }
""" % (THUMBNAIL_WIDTH, THUMBNAIL_WIDTH, THUMBNAIL_WIDTH)


def _e(value: Any) -> str:
    """Escaped text of any value from a run file."""
    if isinstance(value, str):
        return escape(value, quote=True)
    return escape(json.dumps(value, sort_keys=True, default=str), quote=True)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any) -> str:
    return "&ndash;" if _is_missing(value) else f"{float(value):.4g}"


def _direction(info: dict[str, Any], metric: str) -> bool | None:
    """True when higher is better, False when lower is, None when run.json does not say."""
    value = info.get("metrics", {}).get(metric, {}).get("higher_is_better")
    return value if isinstance(value, bool) else None


def _arrow(direction: bool | None) -> str:
    if direction is None:
        return ""
    return ' <span title="higher is better">&uarr;</span>' if direction else ' <span title="lower is better">&darr;</span>'


def _settings_list(settings: dict[str, Any]) -> str:
    if not settings:
        return '<span class="muted">none</span>'
    items = "".join(f"<li><code>{_e(key)}</code>: {_e(value)}</li>" for key, value in settings.items())
    return f'<ul class="settings">{items}</ul>'


def _is_model_key(key: str) -> bool:
    return "model" in key or "revision" in key


def _summary(info: dict[str, Any]) -> str:
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
    parts = ["<h2>Run</h2><table>"]
    parts += [f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in rows]
    parts.append("</table>")

    parts.append("<h2>Methods</h2><table><tr><th>method</th><th>settings hash</th><th>settings</th></tr>")
    for name, entry in info.get("methods", {}).items():
        entry = entry if isinstance(entry, dict) else {}
        settings = entry.get("settings") or {}
        parts.append(
            f"<tr><td>{_e(name)}</td><td><code>{_e(entry.get('settings_hash'))}</code></td>"
            f"<td>{_settings_list(settings if isinstance(settings, dict) else {'settings': settings})}</td></tr>"
        )
    parts.append("</table>")

    parts.append(
        "<h2>Metrics</h2><table><tr><th>metric</th><th>better</th><th>range</th>"
        "<th>models</th><th>other settings</th></tr>"
    )
    for name, entry in info.get("metrics", {}).items():
        settings = entry.get("settings") or {}
        settings = settings if isinstance(settings, dict) else {"settings": settings}
        # The model the run resolved (hub id or path, revision), then what the metric itself reported.
        models = {"model": entry["model"]} if entry.get("model") else {}
        models.update({k: v for k, v in settings.items() if _is_model_key(k)})
        others = {k: v for k, v in settings.items() if not _is_model_key(k)}
        direction = _direction(info, name)
        better = "higher" if direction else "lower" if direction is False else "?"
        value_range = " to ".join(_e(bound) for bound in entry.get("range") or [])
        parts.append(
            f"<tr><td>{_e(name)}</td><td>{better}{_arrow(direction)}</td><td>{value_range}</td>"
            f"<td>{_settings_list(models)}</td><td>{_settings_list(others)}</td></tr>"
        )
    parts.append("</table>")
    return "\n".join(parts)


def _best_rows(table: pd.DataFrame, metric: str, direction: bool | None) -> set[int]:
    """Row positions holding the best mean of ``metric`` (all of them on a tie)."""
    values = table[metric].astype("float64")
    if direction is None or values.notna().sum() == 0:
        return set()
    best = values.max() if direction else values.min()
    return {i for i, value in enumerate(values) if value == best}


def _leaderboard_table(info: dict[str, Any], table: pd.DataFrame) -> str:
    metrics = [column for column in table.columns if column not in LEADERBOARD_COLUMNS]
    best = {metric: _best_rows(table, metric, _direction(info, metric)) for metric in metrics}
    head = "".join(f"<th>{_e(metric)}{_arrow(_direction(info, metric))}</th>" for metric in metrics)
    parts = [
        f'<h2>Leaderboard</h2><p class="muted">Means over scored images; best value per column in bold. '
        f'Also as <a href="../{LEADERBOARD_CSV}">{LEADERBOARD_CSV}</a>.</p>',
        f'<table class="leaderboard"><tr><th>method</th><th>settings hash</th><th>images</th><th>scored</th>{head}</tr>',
    ]
    for position, record in enumerate(table.to_dict("records")):
        cells = "".join(
            f'<td class="num{" best" if position in best[metric] else ""}">{_fmt(record[metric])}</td>'
            for metric in metrics
        )
        parts.append(
            f"<tr><td>{_e(record['method'])}</td><td><code>{_e(record['settings_hash'])}</code></td>"
            f'<td class="num">{int(record["n_images"])}</td><td class="num">{int(record["n_scored"])}</td>{cells}</tr>'
        )
    parts.append("</table>")
    return "\n".join(parts)


def _image_cell(run_dir: Path, sample: dict[str, Any], metrics: list[str]) -> str:
    image = sample["image"]
    url = _e("../" + quote(image, safe="/"))
    alt = _e(f"{sample['method']} {sample['case_id']} seed {sample['seed']}")
    if (run_dir / image).is_file():
        picture = f'<a href="{url}"><img src="{url}" width="{THUMBNAIL_WIDTH}" alt="{alt}" loading="lazy"></a>'
    else:
        picture = f'<div class="missing">image missing: <code>{_e(image)}</code></div>'
    scores = [f"{_e(metric)} {_fmt(sample[metric])}" for metric in metrics if not _is_missing(sample[metric])]
    caption = "<br>".join(scores) if scores else '<span class="muted">not scored</span>'
    return f"<figure>{picture}<figcaption>seed {_e(sample['seed'])}<br>{caption}</figcaption></figure>"


def _case_grid(run_dir: Path, samples: pd.DataFrame, table: pd.DataFrame) -> str:
    metrics = metric_columns(samples)
    configs = list(zip(table["method"], table["settings_hash"]))
    head = "".join(f"<th>{_e(method)}<br><code class=\"muted\">{_e(hash_)}</code></th>" for method, hash_ in configs)
    parts = ["<h2>Cases</h2>", f'<table class="cases"><tr><th>case</th>{head}</tr>']
    records = samples.sort_values("seed", kind="stable").to_dict("records")
    for case_id in dict.fromkeys(samples["case_id"]):
        case_samples = [r for r in records if r["case_id"] == case_id]
        first = case_samples[0]
        subjects = ", ".join(_e(subject) for subject in first["subjects"])
        kind = f" ({_e(first['relation_kind'])})" if first["relation_kind"] else ""
        cells = []
        for method, hash_ in configs:
            mine = [r for r in case_samples if r["method"] == method and r["settings_hash"] == hash_]
            cells.append("<td>" + ("".join(_image_cell(run_dir, r, metrics) for r in mine) or "&ndash;") + "</td>")
        parts.append(
            f"<tr><th><code>{_e(case_id)}</code><br>{_e(first['prompt'] or '')}<br>"
            f'<span class="muted">relation: {_e(first["relation"] or "")}{kind}<br>subjects: {subjects}</span></th>'
            f"{''.join(cells)}</tr>"
        )
    parts.append("</table>")
    return "\n".join(parts)


def render_report(run_dir: Path, info: dict[str, Any], samples: pd.DataFrame, table: pd.DataFrame) -> str:
    """The report page as a string (``table`` is ``leaderboard(samples)``)."""
    benchmark = info.get("benchmark", {})
    tiny = info.get("profile") == "tiny" or bool((samples["profile"] == "tiny").any())
    title = f"relbench report: {benchmark.get('name')} v{benchmark.get('version')} ({info.get('profile')})"
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">Run directory: <code>{_e(run_dir.name)}</code></p>',
        f'<div class="banner" role="alert">{_e(TINY_BANNER)}</div>' if tiny else "",
        _leaderboard_table(info, table),
        _summary(info),
        _case_grid(run_dir, samples, table),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/leaderboard.csv`` and ``<run_dir>/report/index.html``; return the page's path."""
    run_dir = Path(run_dir)
    info, samples = load_run(run_dir)
    table = leaderboard(samples)
    save_csv(table, run_dir / LEADERBOARD_CSV)
    report_dir = run_dir / REPORT_DIR
    report_dir.mkdir(exist_ok=True)
    page = report_dir / "index.html"
    page.write_text(render_report(run_dir, info, samples, table), encoding="utf-8")
    return page
