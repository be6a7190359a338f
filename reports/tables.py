"""Read a run directory (``run.json`` + ``samples.jsonl``) into a pandas table.

``load_run(run_dir)`` returns ``(run_info, samples)``: ``run_info`` is the parsed ``run.json`` and
``samples`` has one row per generated image with the columns of ``SAMPLE_COLUMNS`` (the fields of
``relbench.rows.Row``, the owner of a samples.jsonl row, except ``metrics`` and ``method_settings``;
then ``metric_details`` and ``run_dir``) followed by one float column per metric (its ``value``;
NaN where the image has not been scored by that metric).
Metric columns come in the order ``run.json`` lists the metrics, then any metric only the samples
name, in order of first appearance.

Reading rules (the run store appends to ``samples.jsonl`` while it runs, and can be killed):

* blank lines are skipped; each line is parsed by ``relbench.rows.Row.from_json`` (a bad key field,
  image path or metric value is an error naming the file, line and field); the settings a row
  refers to (schema 2) are resolved by its own run's ``run.json`` (``metric_settings``,
  ``method_settings``; merged runs each by their own), schema-1 rows hold them inline;
* bytes after the last newline are a write cut short by a killed run: ignored with a warning;
  an unparseable complete line is an error naming the file and line
  (``relbench.runstore.read_numbered_rows``);
* when the same (method, settings_hash, case_id, seed) appears more than once, the later line wins
  (it is the newer record, e.g. the image's scores written after the image itself);
* a metric's direction comes from ``run.json`` (``metrics.<name>.higher_is_better``); rows may
  carry it too (``metrics.<name>.higher_is_better``) and fill it in where ``run.json`` does not say.

Two columns keep what the flat values lose: ``metric_details`` (per row, ``{metric: details}``
for every metric the row was scored with, so a metric that ran and gave no value (NaN or null) can
be told apart from one that never ran) and ``run_dir`` (the run directory the row was read from).

Failure flags (``failure_flags``) are derived from metric details, data-driven: any metric whose
details carry one of the keys of ``FLAG_RULES`` reports on that failure; see ``FLAG_RULES``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from relbench.errors import RelbenchError
from relbench.rows import KEY_FIELDS, ROW_FIELDS, Row, SettingsTable, UnknownSettings
from relbench.runstore import RUN_SCHEMA_VERSION, RunStore, collector_paused, read_numbered_rows

# The run directory's file names, as the run store lays it out.
RUN_FILE = RunStore(Path()).run_json.name
SAMPLES_FILE = RunStore(Path()).samples_jsonl.name

# The row's fields that are one column each (subjects and subject_categories as tuples, image
# "/"-separated relative to the run directory, generation_seconds NaN where null).
ROW_COLUMNS: tuple[str, ...] = tuple(name for name in ROW_FIELDS if name not in ("metrics", "method_settings"))

# Columns every samples table has, in this order; every other column is a metric value.
SAMPLE_COLUMNS: tuple[str, ...] = (
    *ROW_COLUMNS,
    "metric_details",  # {metric: details dict} for each metric the row was scored with
    "run_dir",  # the run directory the row was read from (as given)
)

# Identity of one generated image inside a run (``Row.key``).
SAMPLE_KEY: tuple[str, ...] = KEY_FIELDS


def metric_columns(samples: pd.DataFrame) -> list[str]:
    """The metric value columns of a samples table, in table order."""
    return [column for column in samples.columns if column not in SAMPLE_COLUMNS]


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """The parsed ``run.json`` of ``run_dir``; RelbenchError when it is not a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RelbenchError(f"{run_dir}: not a directory; expected a run directory containing {RUN_FILE}")
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise RelbenchError(f"{run_dir}: not a run directory (no {RUN_FILE})")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RelbenchError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise RelbenchError(f"{path}: expected a JSON object at the top level")
    if info.get("schema") != RUN_SCHEMA_VERSION:
        raise RelbenchError(f"{path}: schema: expected {RUN_SCHEMA_VERSION}, got {info.get('schema')!r}")
    for name, kind in (("benchmark", dict), ("methods", dict), ("metrics", dict)):
        if name in info and not isinstance(info[name], kind):
            raise RelbenchError(f"{path}: {name}: expected a JSON object")
    for metric, entry in info.get("metrics", {}).items():
        if not isinstance(entry, dict):
            raise RelbenchError(f"{path}: metrics.{metric}: expected a JSON object")
    return info


def read_sample_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each record of a samples file, per the rules above."""
    records, tail = read_numbered_rows(path)
    if tail.strip():
        warnings.warn(f"{path}: line {len(records) + 1}+: ignoring a truncated last line (a run stopped mid-write)", stacklevel=2)
    return records


def _row(
    where: str, record: dict[str, Any], info: dict[str, Any], settings: SettingsTable
) -> tuple[dict[str, Any], dict[str, float], dict[str, bool]]:
    """The fixed columns, the metric values and the metric directions of one samples.jsonl record."""
    parsed = Row.from_json(record, where, settings)
    benchmark = info.get("benchmark", {})
    row: dict[str, Any] = {name: getattr(parsed, name) for name in ROW_COLUMNS}
    # What a row does not say, run.json does.
    for column, fallback in (("benchmark", benchmark.get("name")), ("benchmark_version", benchmark.get("version")),
                             ("profile", info.get("profile"))):
        if row[column] is None:
            row[column] = fallback
    # A method that names its rows (the folder method's `name` setting: images made elsewhere)
    # appears under that name in every table; the settings hash still tells configurations apart.
    display = parsed.method_settings.get("display_name")
    if isinstance(display, str) and display:
        row["method"] = display
    row["generation_seconds"] = math.nan if parsed.generation_seconds is None else float(parsed.generation_seconds)
    values: dict[str, float] = {}
    details: dict[str, dict[str, Any]] = {}
    directions: dict[str, bool] = {}
    for name, result in parsed.metrics.items():
        if name in SAMPLE_COLUMNS:
            raise RelbenchError(f"{where}: metrics.{name}: a metric may not be named like a sample column")
        values[name] = math.nan if result["value"] is None else float(result["value"])
        # Details are free-form per metric; anything but an object is kept as no details.
        details[name] = result["details"] if isinstance(result.get("details"), dict) else {}
        if isinstance(result.get("higher_is_better"), bool):
            directions[name] = result["higher_is_better"]
    row["metric_details"] = details
    return row, values, directions


def load_samples(run_dir: Path, info: dict[str, Any]) -> pd.DataFrame:
    """The samples table of a run whose ``run.json`` is ``info`` (empty when nothing was written yet).

    Directions that only the rows state are written into ``info["metrics"]`` (see the module
    docstring), so that ``info`` says the direction of every metric the table has.
    """
    path = Path(run_dir) / SAMPLES_FILE
    records = read_sample_lines(path) if path.is_file() else []
    settings = SettingsTable.from_run(info, str(Path(run_dir) / RUN_FILE))
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {}  # insertion order = first appearance
    metric_names: list[str] = list(info.get("metrics", {}))
    row_directions: dict[str, bool] = {}
    for line_number, record in records:
        where = f"{path}: line {line_number}"
        try:
            row, values, directions = _row(where, record, info, settings)
        except UnknownSettings:
            # A running evaluation stores new settings in run.json before the first row naming
            # them: this row was appended after ``info`` was read. The run.json of now holds them.
            settings = SettingsTable.from_run(read_run_info(Path(run_dir)), str(Path(run_dir) / RUN_FILE))
            row, values, directions = _row(where, record, info, settings)
        row["run_dir"] = str(run_dir)
        for name in values:
            if name not in metric_names:
                metric_names.append(name)
        for name, direction in directions.items():
            row_directions.setdefault(name, direction)
        by_key[tuple(row[k] for k in SAMPLE_KEY)] = {**row, **values}
    metrics_info = info.setdefault("metrics", {})
    for name, direction in row_directions.items():
        entry = metrics_info.setdefault(name, {})
        if not isinstance(entry.get("higher_is_better"), bool):
            entry["higher_is_better"] = direction
    frame = pd.DataFrame(list(by_key.values()), columns=[*SAMPLE_COLUMNS, *metric_names])
    for name in metric_names:
        frame[name] = frame[name].astype("float64")
    frame["generation_seconds"] = frame["generation_seconds"].astype("float64")
    return frame


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """``(run.json as a dict, samples table)`` of one run directory."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    with collector_paused():  # many small objects, no cycles (relbench.runstore.collector_paused)
        return info, load_samples(run_dir, info)


# --------------------------------------------------------------------------------------------
# Failure flags from metric details


@dataclass(frozen=True)
class FlagRule:
    """A metric whose details carry ``key`` reports on ``flag``; ``fails(value)`` raises the flag."""

    flag: str
    key: str
    fails: Callable[[float], bool]
    meaning: str


# The three failure modes the DreamRelation paper names, as the report's filter shows them.
FAILURE_FLAGS: dict[str, str] = {
    "subject_missing": "a subject is missing",
    "subjects_confused": "subjects are confused",
    "relation_not_shown": "the relation is not shown",
}

# The detail keys the report understands (the contract with metrics; keys are looked up in the
# details of every metric of a row). Values may be numbers, booleans or "yes"/"no" strings; a
# value that is none of these is ignored. A row with none of these keys has no flags (NA), so
# runs without presence, confusion or judge metrics simply have nothing to filter.
VERDICT_KEY = "relation_shown"
FLAG_RULES: tuple[FlagRule, ...] = (
    FlagRule("subject_missing", "n_missing", lambda v: v > 0, "number of the case's subjects not found in the image"),
    FlagRule("subject_missing", "presence_fraction", lambda v: v < 1, "fraction of the case's subjects found (1 = all)"),
    FlagRule("subjects_confused", "swapped", lambda v: v > 0, "1 when two subjects' identities are swapped"),
    FlagRule("subjects_confused", "blended", lambda v: v > 0, "1 when one subject's crop resembles several subjects"),
    FlagRule("subjects_confused", "confused", lambda v: v > 0, "1 when the metric found any confusion"),
    FlagRule("relation_not_shown", VERDICT_KEY, lambda v: v < 0.5, "the relation judge's verdict: 1 shown, 0 not shown"),
)

_TRUE_WORDS = {"yes": 1.0, "true": 1.0, "no": 0.0, "false": 0.0}


def detail_number(value: Any) -> float | None:
    """A detail value as a number: numbers, booleans and yes/no words; None for anything else."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, str):
        return _TRUE_WORDS.get(value.strip().lower())
    return None


def row_flags(details: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """Per failure flag of one row: True raised, False checked and fine, None not measured."""
    flags: dict[str, bool | None] = dict.fromkeys(FAILURE_FLAGS)
    for metric_details in details.values():
        for rule in FLAG_RULES:
            value = detail_number(metric_details.get(rule.key)) if isinstance(metric_details, dict) else None
            if value is not None:
                flags[rule.flag] = bool(flags[rule.flag]) or rule.fails(value)
    return flags


def failure_flags(samples: pd.DataFrame) -> pd.DataFrame:
    """One nullable boolean column per failure flag (``FAILURE_FLAGS``), aligned with ``samples``."""
    details = samples["metric_details"] if "metric_details" in samples.columns else pd.Series([{}] * len(samples), index=samples.index)
    rows = [row_flags(d if isinstance(d, dict) else {}) for d in details]
    frame = pd.DataFrame(rows, index=samples.index, columns=list(FAILURE_FLAGS))
    return frame.astype("boolean")


def judge_metrics(samples: pd.DataFrame) -> list[str]:
    """Metrics whose details carry the relation judge's verdict (``VERDICT_KEY``), in table order."""
    if "metric_details" not in samples.columns:
        return []
    found = {name for d in samples["metric_details"] if isinstance(d, dict)
             for name, metric_details in d.items() if isinstance(metric_details, dict) and VERDICT_KEY in metric_details}
    return [name for name in metric_columns(samples) if name in found]


def scored_mask(samples: pd.DataFrame, metric: str) -> pd.Series:
    """Rows scored by ``metric`` (a value or NaN/null); rows without details: those with a value."""
    if "metric_details" not in samples.columns:
        return samples[metric].notna()
    return samples["metric_details"].map(lambda d: isinstance(d, dict) and metric in d).astype(bool) | samples[metric].notna()


# --------------------------------------------------------------------------------------------
# Where runs are, and the tidy view (``relbench.load_runs``)


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """A run directory stays; a folder holding runs (a sweep's output) gives every run below it,
    sorted. What the commands and ``relbench.load_runs`` read; a path that is neither stays, so
    reading it names it in the error."""
    out: list[Path] = []
    for path in map(Path, paths):
        if (path / RUN_FILE).is_file() or not path.is_dir():
            out.append(path)
            continue
        found = sorted(p.parent for p in path.rglob(RUN_FILE))
        out.extend(found or [path])
    return out


# The tidy table: the samples table's fixed columns (but ``metric_details``), the image's path
# (``run_dir`` joined with ``image``), then one metric of the image per row.
TIDY_VALUE_COLUMNS: tuple[str, ...] = ("metric", "value", "higher_is_better", "details")
TIDY_COLUMNS: tuple[str, ...] = (
    *(c for c in SAMPLE_COLUMNS if c != "metric_details"), "image_path", *TIDY_VALUE_COLUMNS,
)
_FIXED_COLUMNS: tuple[str, ...] = tuple(c for c in SAMPLE_COLUMNS if c != "metric_details")


def is_tidy(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` is a tidy table (``tidy_samples``) rather than a samples table."""
    return set(TIDY_VALUE_COLUMNS) <= set(frame.columns) and "metric_details" not in frame.columns


def tidy_samples(samples: pd.DataFrame, directions: dict[str, bool | None]) -> pd.DataFrame:
    """The samples table with one row per (image, metric it was scored with), ``TIDY_COLUMNS``.

    ``value`` is the metric's value (NaN where it ran and gave none), ``higher_is_better`` its
    direction from ``directions`` (<NA>: unknown), ``details`` its details. Rows come image by
    image, metrics in column order; an image no metric has scored yet keeps one row with
    ``metric`` empty, so that counts of images stay right. ``wide_samples`` gives the samples
    table back.
    """
    import numpy as np

    metrics = metric_columns(samples)
    details = [d if isinstance(d, dict) else {} for d in samples["metric_details"]]
    values = samples[metrics].to_numpy(dtype="float64") if metrics else np.empty((len(samples), 0))
    scored = np.array([[name in d for name in metrics] for d in details], dtype=bool).reshape(len(samples), len(metrics))
    scored |= ~np.isnan(values)
    image, column = np.nonzero(scored)  # row-major: image by image, metrics in column order
    bare = np.flatnonzero(~scored.any(axis=1))
    # One sequence: each image's metrics, an unscored image's single row at its place.
    image = np.concatenate([image, bare])
    column = np.concatenate([column, np.full(len(bare), -1)])
    order = np.lexsort((column, image))
    image, column = image[order], column[order]
    names: list[str | None] = [metrics[j] if j >= 0 else None for j in column]
    paths = np.array([str(Path(r) / i) for r, i in zip(samples["run_dir"], samples["image"])], dtype=object)
    frame = samples.loc[:, list(_FIXED_COLUMNS)].iloc[image].reset_index(drop=True)
    frame["image_path"] = paths[image] if len(paths) else []
    frame["metric"] = names
    frame["value"] = np.where(column >= 0, values[image, np.maximum(column, 0)] if metrics else np.nan, np.nan)
    frame["higher_is_better"] = pd.array([directions.get(n) if n else None for n in names], dtype="boolean")
    frame["details"] = [details[i].get(n, {}) if n else {} for i, n in zip(image, names)]
    frame["generation_seconds"] = frame["generation_seconds"].astype("float64")
    return frame[list(TIDY_COLUMNS)]


def wide_samples(tidy: pd.DataFrame, metrics: Sequence[str] = ()) -> pd.DataFrame:
    """The samples table of a tidy table (the inverse of ``tidy_samples``): one row per image in
    order of first appearance, a column for each of ``metrics`` (then for any other metric the
    rows name) with NaN where the image has no value."""
    import numpy as np

    names = list(dict.fromkeys([*metrics, *(m for m in tidy["metric"].dropna().unique() if isinstance(m, str))]))
    if tidy.empty:
        return pd.DataFrame(columns=[*SAMPLE_COLUMNS, *names]).astype(dict.fromkeys(names, "float64"))
    # An image is one per run and key.
    image = tidy.groupby(["run_dir", "benchmark", "benchmark_version", *SAMPLE_KEY], sort=False, dropna=False).ngroup().to_numpy()
    first = ~pd.Series(image).duplicated().to_numpy()
    frame = tidy.loc[first, list(_FIXED_COLUMNS)].reset_index(drop=True)
    frame = frame.iloc[np.argsort(image[first], kind="stable")].reset_index(drop=True)
    position = {name: j for j, name in enumerate(names)}
    column = np.array([position.get(m, -1) if isinstance(m, str) else -1 for m in tidy["metric"]])
    has = column >= 0
    values = np.full((len(frame), len(names)), np.nan)
    values[image[has], column[has]] = tidy["value"].to_numpy(dtype="float64")[has]
    details: list[dict[str, Any]] = [{} for _ in range(len(frame))]
    for i, j, d in zip(image[has], column[has], tidy["details"].to_numpy()[has]):
        details[i][names[j]] = d if isinstance(d, dict) else {}
    frame["metric_details"] = details
    for j, name in enumerate(names):
        frame[name] = values[:, j]
    frame["generation_seconds"] = frame["generation_seconds"].astype("float64")
    return frame[[*SAMPLE_COLUMNS, *names]]
