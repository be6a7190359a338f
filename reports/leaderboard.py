"""The leaderboard: one row per method configuration with every metric's mean and 95% CI.

CSV schema (``leaderboard.csv``), STABLE: columns in this order, one row per (method, settings
hash, benchmark, benchmark version, profile). Rows are sorted by benchmark, benchmark version and
profile, then by the headline metric's mean, best first (``stats.choose_headline``; descending
when its direction is unknown; rows without a value last), then by method and settings hash.

==================  ==========================================================================
method              method name as registered (``sdxl``, ``reference-collage``, ...)
settings            the method's settings as recorded in run.json (``methods.<name>.settings``),
                    compact JSON with sorted keys; empty when no run.json given records them
settings_hash       hash of the method's settings; two hashes of one method are two rows
benchmark           benchmark name
benchmark_version   benchmark version
profile             ``tiny`` (random tiny models, scores not meaningful) or ``full``
n_images            images generated (one per case and seed)
n_scored            images with at least one metric value
n_cases             distinct cases with an image
<metric>            per metric, in the order the first run lists its metrics, then metrics only
<metric>_ci_low     later runs have: the mean over cases of the per-case mean over seeds (NaN
<metric>_ci_high    values skipped), and its bootstrap 95% CI over cases (percentile method,
                    9999 resamples, seed 0; see ``relbench.reports.stats``); empty when no case
                    has a value, CI empty with fewer than 2 cases
<metric>_n          the number of cases that mean is over (0: no value)
<metric>_case_set   ``same``: every configuration of this benchmark, version and profile that
                    scored the metric scored the same cases; ``common``: they scored different
                    cases and every mean is over the cases all of them scored (the default
                    view); ``differ``: they scored different cases and every mean is over the
                    configuration's own cases (``--all-cases``): not comparable
relbench_version    relbench version(s) of the run(s) the row's images come from (run.json),
git_commit          likewise the git commit(s); several distinct values are joined with ";"
==================  ==========================================================================

Numbers are written with 10 significant digits (0.3, not 0.30000000000000004).

Merging runs (``load_runs``): an image with the same (method, settings_hash, benchmark,
benchmark_version, case_id, seed) in several runs counts once, with a warning; the copy with the
most metric values is kept (the first run given wins ties). Runs whose ``run.json`` give one metric
another model or other settings are refused: their means are not comparable.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from relbench.atomic import atomic_write_text
from relbench.errors import RelbenchError, output_errors
from relbench.reports.stats import (
    COMMON, COMPARISON_COLUMNS, DIFFER, GROUP_COLUMNS, MIN_CASES_FOR_BEST, SAME, Headline, choose_headline,
    comparison_key, metric_summary, nan_free,
)
from relbench.reports.tables import RUN_FILE, SAMPLE_COLUMNS, load_run, metric_columns

COUNT_COLUMNS: tuple[str, ...] = ("n_images", "n_scored", "n_cases")
LEADING_COLUMNS: tuple[str, ...] = (
    "method", "settings", "settings_hash", "benchmark", "benchmark_version", "profile", *COUNT_COLUMNS,
)
TRAILING_COLUMNS: tuple[str, ...] = ("relbench_version", "git_commit")
CI_SUFFIXES: tuple[str, str] = ("_ci_low", "_ci_high")
METRIC_SUFFIXES: tuple[str, ...] = ("", *CI_SUFFIXES, "_n", "_case_set")

# Identity of one generated image across runs.
MERGE_KEY: tuple[str, ...] = ("method", "settings_hash", "benchmark", "benchmark_version", "case_id", "seed")

Run = tuple[Path, dict[str, Any]]  # (run directory, its run.json)


def leaderboard_columns(metrics: Sequence[str]) -> list[str]:
    """The CSV header for these metrics (schema above)."""
    per_metric = [f"{metric}{suffix}" for metric in metrics for suffix in METRIC_SUFFIXES]
    return [*LEADING_COLUMNS, *per_metric, *TRAILING_COLUMNS]


def compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def method_settings(runs: Sequence[Run], method: str, settings_hash: str) -> Any | None:
    """``methods.<method>.settings`` of the first run that ran ``method`` with this hash, else None."""
    for _, info in runs:
        entry = info.get("methods", {}).get(method)
        if isinstance(entry, dict) and entry.get("settings_hash") == settings_hash and "settings" in entry:
            return entry["settings"]
    return None


def _provenance(runs: Sequence[Run], run_dirs: set[str], field: str) -> str:
    values = [info.get(field) for path, info in runs if str(path) in run_dirs]
    return ";".join(dict.fromkeys(str(v) for v in values if v not in (None, "")))


def leaderboard(
    samples: pd.DataFrame,
    runs: Sequence[Run] = (),
    summary: pd.DataFrame | None = None,
    *,
    headline: str | None = None,
    directions: dict[str, bool | None] | None = None,
    cases: str = COMMON,
) -> pd.DataFrame:
    """The leaderboard table (schema above) of a samples table.

    ``runs`` (directory and run.json of each run the samples come from) give the settings and
    provenance columns; ``summary`` is ``stats.metric_summary(samples, cases=cases)`` when already
    computed; rows are sorted by ``headline`` (a metric, in its direction from ``directions``).
    """
    metrics = metric_columns(samples)
    columns = leaderboard_columns(metrics)
    if samples.empty:
        return pd.DataFrame(columns=columns)
    summary = metric_summary(samples, metrics, cases=cases) if summary is None else summary
    stats = {(nan_free(r[c] for c in GROUP_COLUMNS), r["metric"]): r for r in summary.to_dict("records")}
    rows: list[dict[str, Any]] = []
    # dropna=False keeps rows whose benchmark or profile is missing from old files.
    for key, group in samples.groupby(list(GROUP_COLUMNS), dropna=False, sort=True):
        row: dict[str, Any] = dict(zip(GROUP_COLUMNS, key))
        settings = method_settings(runs, row["method"], row["settings_hash"])
        row["settings"] = "" if settings is None else compact_json(settings)
        row["n_images"] = len(group)
        row["n_scored"] = int(group[metrics].notna().any(axis=1).sum()) if metrics else 0
        row["n_cases"] = int(group["case_id"].nunique())
        for metric in metrics:
            entry = stats.get((nan_free(key), metric), {})
            row[metric] = entry.get("mean", math.nan)
            row[f"{metric}_ci_low"] = entry.get("ci_low", math.nan)
            row[f"{metric}_ci_high"] = entry.get("ci_high", math.nan)
            row[f"{metric}_n"] = entry.get("n_cases", 0)
            row[f"{metric}_case_set"] = entry.get("case_set", SAME)
        run_dirs = set(group["run_dir"].dropna().astype(str))
        row["relbench_version"] = _provenance(runs, run_dirs, "relbench_version")
        row["git_commit"] = _provenance(runs, run_dirs, "git_commit")
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    for column in COUNT_COLUMNS:
        table[column] = table[column].astype("int64")
    for metric in metrics:
        for suffix in ("", *CI_SUFFIXES):
            table[f"{metric}{suffix}"] = table[f"{metric}{suffix}"].astype("float64")
        table[f"{metric}_n"] = table[f"{metric}_n"].astype("int64")
    return _sort_by_headline(table, headline, (directions or {}).get(headline) if headline else None)


def _sort_by_headline(table: pd.DataFrame, headline: str | None, direction: bool | None) -> pd.DataFrame:
    """Rows by comparison group, then the headline's mean best first (NaN last), then configuration."""
    order = [*COMPARISON_COLUMNS]
    keyed = table
    if headline is not None:
        keyed = table.assign(_headline=table[headline] if direction is False else -table[headline])
        order.append("_headline")
    keyed = keyed.sort_values([*order, "method", "settings_hash"], na_position="last", kind="stable")
    return keyed[table.columns].reset_index(drop=True)


def best_mask(table: pd.DataFrame, metric: str, direction: bool | None) -> pd.Series:
    """Which leaderboard rows hold the best mean of ``metric`` (the rule in ``relbench.reports.stats``).

    Within each comparison group: among rows scored on the same cases (case set ``same`` or
    ``common``, never ``differ``) with at least ``MIN_CASES_FOR_BEST`` cases and a CI, the highest
    mean (lowest when lower is better); all of them on a tie; none without a direction.
    """
    best = pd.Series(False, index=table.index)
    if direction is None or table.empty:
        return best
    eligible = (
        (table[f"{metric}_n"] >= MIN_CASES_FOR_BEST)
        & table[f"{metric}_ci_low"].notna()
        & table[f"{metric}_ci_high"].notna()
        & (table[f"{metric}_case_set"] != DIFFER)
    )
    groups = [comparison_key(record) for record in table.to_dict("records")]
    for group in dict.fromkeys(groups):
        rows = eligible & pd.Series([g == group for g in groups], index=table.index)
        values = table.loc[rows, metric].astype("float64")
        if values.notna().any():
            target = values.max() if direction else values.min()
            best |= rows & (table[metric] == target)
    return best


def case_set_note(summary: pd.DataFrame) -> str | None:
    """One line on the metrics whose configurations scored different cases (None when all agree)."""
    notes = []
    for case_set, text in (
        (COMMON, "each mean is over the cases all of them scored (the default; --all-cases: each one's own cases)"),
        (DIFFER, "each mean is over that configuration's own cases (--all-cases): not comparable, no best marked"),
    ):
        names = list(dict.fromkeys(summary.loc[summary["case_set"] == case_set, "metric"]))
        if names:
            notes.append(f"{', '.join(names)}: the configurations scored different cases; {text}")
    return "; ".join(notes) or None


def _check_metric_settings(runs: Sequence[tuple[Path, dict[str, Any]]]) -> None:
    """Refuse runs whose run.json give one metric another model or other settings.

    A null entry (a run that has not scored anything yet records no settings) matches anything.
    """
    seen: dict[tuple[str, str], tuple[Path, str]] = {}
    for run_dir, info in runs:
        for name, entry in info.get("metrics", {}).items():
            for field in ("model", "settings"):
                if entry.get(field) is None:
                    continue
                value = json.dumps(entry[field], sort_keys=True)
                first = seen.setdefault((name, field), (run_dir, value))
                if first[1] != value:
                    raise RelbenchError(
                        f"{run_dir / RUN_FILE}: metrics.{name}.{field}: differs from {first[0] / RUN_FILE}; "
                        "means of one metric under different settings cannot share a leaderboard"
                    )


@dataclass
class RunSet:
    """Several runs read together: each run's directory and run.json, and their merged samples."""

    runs: list[Run]
    samples: pd.DataFrame

    def metric_info(self) -> dict[str, dict[str, Any]]:
        """Per metric, the run.json entry of the first run that has it, gaps filled by later runs."""
        merged: dict[str, dict[str, Any]] = {}
        for _, info in self.runs:
            for name, entry in info.get("metrics", {}).items():
                target = merged.setdefault(name, {})
                for field, value in entry.items():
                    if target.get(field) is None:
                        target[field] = value
        return merged

    def directions(self) -> dict[str, bool | None]:
        """Per metric: True when higher is better, False when lower is, None when no run says."""
        info = self.metric_info()
        names = dict.fromkeys([*info, *metric_columns(self.samples)])
        return {name: v if isinstance(v := info.get(name, {}).get("higher_is_better"), bool) else None for name in names}


def load_runs(run_dirs: Sequence[str | Path]) -> RunSet:
    """Read runs and merge their samples, each image counted once (see the module docstring)."""
    if not run_dirs:
        raise RelbenchError("no run directories given; expected at least one")
    runs: list[Run] = []
    frames: list[pd.DataFrame] = []
    for run_dir in run_dirs:
        info, samples = load_run(run_dir)
        runs.append((Path(run_dir), info))
        frames.append(samples)
    _check_metric_settings(runs)
    nonempty = [frame for frame in frames if not frame.empty]
    if not nonempty:
        return RunSet(runs, frames[0])
    merged = pd.concat(nonempty, ignore_index=True, sort=False)
    metrics = list(dict.fromkeys(m for frame in frames for m in metric_columns(frame)))
    merged = merged[[*SAMPLE_COLUMNS, *metrics]]
    # Keep the copy with the most metric values; the stable sort keeps run order among equals.
    n_values = merged[metrics].notna().sum(axis=1) if metrics else pd.Series(0, index=merged.index)
    order = n_values.sort_values(ascending=False, kind="stable").index
    deduped = merged.loc[order].drop_duplicates(subset=list(MERGE_KEY), keep="first").sort_index()
    n_dropped = len(merged) - len(deduped)
    if n_dropped:
        warnings.warn(
            f"{n_dropped} image(s) appear in more than one run (same method, settings_hash, benchmark, case, seed); "
            "each is counted once",
            stacklevel=2,
        )
    return RunSet(runs, deduped.reset_index(drop=True))


@dataclass(frozen=True)
class Board:
    """A leaderboard with what it was computed from: the metric summary and the headline."""

    table: pd.DataFrame
    summary: pd.DataFrame  # stats.metric_summary in the same case view
    headline: Headline
    cases: str  # the case view: COMMON or ALL

    def notes(self) -> list[str]:
        return board_notes(self.headline, self.summary)


def board_notes(headline: Headline, summary: pd.DataFrame) -> list[str]:
    """What the commands print besides the files: the headline and why, and case sets that differ."""
    note = case_set_note(summary)
    return [headline.line(), *([f"cases: {note}"] if note else [])]


def build_leaderboard(run_set: RunSet, headline: str | None = None, cases: str = COMMON) -> Board:
    """The leaderboard of merged runs in a case view, sorted by the headline (``--headline`` or the default)."""
    samples = run_set.samples
    chosen = choose_headline(samples, headline)
    summary = metric_summary(samples, metric_columns(samples), cases=cases)
    table = leaderboard(samples, run_set.runs, summary, headline=chosen.metric, directions=run_set.directions())
    return Board(table, summary, chosen, cases)


def write_leaderboard_csv(
    run_dirs: Sequence[str | Path], output: str | Path, headline: str | None = None, cases: str = COMMON
) -> Board:
    """Write the leaderboard of one or more runs to ``output`` (CSV, schema above); returns it."""
    board = build_leaderboard(load_runs(run_dirs), headline, cases)
    save_csv(board.table, output)
    return board


# A text cell starting with one of these is run as a formula by spreadsheets (OWASP's CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula (a method named ``=HYPERLINK(...)``,
    a prompt starting with "-"), prefixed with a single quote so it shows as text; numbers, -0.5
    included, and every other value stay as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def save_csv(table: pd.DataFrame, output: str | Path) -> Path:
    """Write a table as CSV (atomically); numbers with 10 significant digits (0.3, not
    0.30000000000000004); text cells and headers through ``spreadsheet_safe``.

    Records end in CRLF, as RFC 4180 says: Python's csv module (3.11) quotes a cell holding a
    carriage return only when the record separator contains one, and an unquoted bare CR in a cell
    splits its row for every reader."""
    output = Path(output)
    safe = table.copy()
    safe.columns = [spreadsheet_safe(column) for column in table.columns]
    for position, dtype in enumerate(safe.dtypes):
        if not pd.api.types.is_numeric_dtype(dtype):  # numbers are never escaped
            safe.isetitem(position, safe.iloc[:, position].map(spreadsheet_safe))
    text = safe.to_csv(index=False, float_format="%.10g", lineterminator="\r\n")
    with output_errors(output):  # a full disk or a folder that cannot be written: one line
        atomic_write_text(output, text)
    return output
