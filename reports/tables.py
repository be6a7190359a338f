"""Read a run directory (``run.json`` + ``samples.jsonl``) into a pandas table.

``load_run(run_dir)`` returns ``(run_info, samples)``: ``run_info`` is the parsed ``run.json`` and
``samples`` has one row per generated image with the columns of ``SAMPLE_COLUMNS`` followed by one
float column per metric (its ``value``; NaN where the image has not been scored by that metric).
Metric columns come in the order ``run.json`` lists the metrics, then any metric only the samples
name, in order of first appearance.

Reading rules (the run store appends to ``samples.jsonl`` while it runs, and can be killed):

* blank lines are skipped;
* bytes after the last newline are a write cut short by a killed run: ignored with a warning;
  an unparseable complete line is an error naming the file and line
  (``relbench.runstore.read_numbered_rows``);
* when the same (method, settings_hash, case_id, seed) appears more than once, the later line wins
  (it is the newer record, e.g. the image's scores written after the image itself).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from relbench.errors import RelbenchError
from relbench.runstore import read_numbered_rows

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.jsonl"
SCHEMA = 1

# Columns every samples table has, in this order; every other column is a metric value.
SAMPLE_COLUMNS: tuple[str, ...] = (
    "method",
    "settings_hash",
    "benchmark",
    "benchmark_version",
    "profile",
    "case_id",
    "relation",
    "relation_kind",
    "subjects",  # tuple of subject ids
    "subject_categories",  # tuple of categories
    "prompt",
    "seed",
    "width",
    "height",
    "image",  # path relative to the run directory, "/"-separated
    "generation_seconds",
)

# Identity of one generated image inside a run.
SAMPLE_KEY: tuple[str, ...] = ("method", "settings_hash", "case_id", "seed")


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
    if info.get("schema") != SCHEMA:
        raise RelbenchError(f"{path}: schema: expected {SCHEMA}, got {info.get('schema')!r}")
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


def _image_path(where: str, value: Any) -> str:
    # The report links images relative to the run directory, so they must stay inside it.
    if not isinstance(value, str) or not value:
        raise RelbenchError(f"{where}: image: expected a path relative to the run directory")
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or ":" in posix.parts[0]:
        raise RelbenchError(f"{where}: image: expected a path inside the run directory, got {value!r}")
    return posix.as_posix()


def _number(where: str, field: str, value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RelbenchError(f"{where}: {field}: expected a number or null, got {value!r}")
    return float(value)


def _row(where: str, record: dict[str, Any], info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """The fixed columns and the metric values of one samples.jsonl record."""
    if record.get("schema", SCHEMA) != SCHEMA:
        raise RelbenchError(f"{where}: schema: expected {SCHEMA}, got {record.get('schema')!r}")
    for field in ("method", "settings_hash", "case_id"):
        if not isinstance(record.get(field), str) or not record[field]:
            raise RelbenchError(f"{where}: {field}: expected a non-empty string")
    seed = record.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RelbenchError(f"{where}: seed: expected an integer, got {seed!r}")
    benchmark = info.get("benchmark", {})
    row: dict[str, Any] = {
        "method": record["method"],
        "settings_hash": record["settings_hash"],
        "benchmark": record.get("benchmark", benchmark.get("name")),
        "benchmark_version": record.get("benchmark_version", benchmark.get("version")),
        "profile": record.get("profile", info.get("profile")),
        "case_id": record["case_id"],
        "relation": record.get("relation"),
        "relation_kind": record.get("relation_kind"),
        "subjects": tuple(record.get("subjects") or ()),
        "subject_categories": tuple(record.get("subject_categories") or ()),
        "prompt": record.get("prompt"),
        "seed": seed,
        "width": record.get("width"),
        "height": record.get("height"),
        "image": _image_path(where, record.get("image")),
        "generation_seconds": _number(where, "generation_seconds", record.get("generation_seconds")),
    }
    metrics = record.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise RelbenchError(f"{where}: metrics: expected a JSON object")
    values: dict[str, float] = {}
    for name, result in metrics.items():
        if name in SAMPLE_COLUMNS:
            raise RelbenchError(f"{where}: metrics.{name}: a metric may not be named like a sample column")
        if not isinstance(result, dict) or "value" not in result:
            raise RelbenchError(f"{where}: metrics.{name}: expected an object with a 'value'")
        values[name] = _number(where, f"metrics.{name}.value", result["value"])
    return row, values


def load_samples(run_dir: Path, info: dict[str, Any]) -> pd.DataFrame:
    """The samples table of a run whose ``run.json`` is ``info`` (empty when nothing was written yet)."""
    path = Path(run_dir) / SAMPLES_FILE
    records = read_sample_lines(path) if path.is_file() else []
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {}  # insertion order = first appearance
    metric_names: list[str] = list(info.get("metrics", {}))
    for line_number, record in records:
        row, values = _row(f"{path}: line {line_number}", record, info)
        for name in values:
            if name not in metric_names:
                metric_names.append(name)
        by_key[tuple(row[k] for k in SAMPLE_KEY)] = {**row, **values}
    frame = pd.DataFrame(list(by_key.values()), columns=[*SAMPLE_COLUMNS, *metric_names])
    for name in metric_names:
        frame[name] = frame[name].astype("float64")
    frame["generation_seconds"] = frame["generation_seconds"].astype("float64")
    return frame


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """``(run.json as a dict, samples table)`` of one run directory."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    return info, load_samples(run_dir, info)
