"""The leaderboard: one row per method configuration with the mean of every metric.

CSV schema (``leaderboard.csv``), columns in this order:

==================  ==========================================================================
method              method name as registered (``sdxl``, ``reference-collage``, ...)
settings_hash       hash of the method's settings; two hashes of one method are two rows
benchmark           benchmark name
benchmark_version   benchmark version
profile             ``tiny`` (random tiny models, scores not meaningful) or ``full``
n_images            images generated (one per case and seed)
n_scored            images with at least one metric value
<metric> ...        one column per metric: the mean of its values over the images that have one
                    (10 significant digits), in the order the first run lists its metrics, then
                    metrics only later runs have; empty when no image of the row has a value
==================  ==========================================================================

Rows are grouped by (method, settings_hash, benchmark, benchmark_version, profile), so means over
different benchmarks or profiles never mix, and sorted by those columns.

Merging runs (``write_leaderboard_csv``): an image with the same (method, settings_hash, benchmark,
benchmark_version, case_id, seed) in several runs counts once, with a warning; the copy with the
most metric values is kept (the first run given wins ties). Runs whose ``run.json`` give one metric
another model or other settings are refused: their means are not comparable.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from relbench.errors import RelbenchError
from relbench.reports.tables import RUN_FILE, SAMPLE_COLUMNS, load_run, metric_columns

GROUP_COLUMNS: tuple[str, ...] = ("method", "settings_hash", "benchmark", "benchmark_version", "profile")
COUNT_COLUMNS: tuple[str, ...] = ("n_images", "n_scored")
LEADERBOARD_COLUMNS: tuple[str, ...] = (*GROUP_COLUMNS, *COUNT_COLUMNS)  # then one column per metric

# Identity of one generated image across runs.
MERGE_KEY: tuple[str, ...] = ("method", "settings_hash", "benchmark", "benchmark_version", "case_id", "seed")


def leaderboard(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per method configuration: counts and the mean of every metric (schema above)."""
    metrics = metric_columns(samples)
    columns = [*LEADERBOARD_COLUMNS, *metrics]
    if samples.empty:
        return pd.DataFrame(columns=columns)
    scored = samples[metrics].notna().any(axis=1) if metrics else pd.Series(False, index=samples.index)
    keyed = samples.assign(_scored=scored)
    # dropna=False keeps rows whose benchmark or profile is missing from old files.
    groups = keyed.groupby(list(GROUP_COLUMNS), sort=True, dropna=False)
    table = groups.agg(
        n_images=("case_id", "size"),
        n_scored=("_scored", "sum"),
        **{name: (name, "mean") for name in metrics},
    ).reset_index()
    table["n_images"] = table["n_images"].astype("int64")
    table["n_scored"] = table["n_scored"].astype("int64")
    return table[columns]


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


def merge_runs(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """The samples of several runs in one table, each image counted once (see the module docstring)."""
    if not run_dirs:
        raise RelbenchError("no run directories given; expected at least one")
    runs: list[tuple[Path, dict[str, Any]]] = []
    frames: list[pd.DataFrame] = []
    for run_dir in run_dirs:
        info, samples = load_run(run_dir)
        runs.append((Path(run_dir), info))
        frames.append(samples)
    _check_metric_settings(runs)
    nonempty = [frame for frame in frames if not frame.empty]
    if not nonempty:
        return frames[0]
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
    return deduped.reset_index(drop=True)


def write_leaderboard_csv(run_dirs: Sequence[str | Path], output: str | Path) -> pd.DataFrame:
    """Write the leaderboard of one or more runs to ``output`` (CSV, schema above); returns it."""
    table = leaderboard(merge_runs(run_dirs))
    save_csv(table, output)
    return table


def save_csv(table: pd.DataFrame, output: str | Path) -> Path:
    """Write a leaderboard table as CSV; means with 10 significant digits (0.3, not 0.30000000000000004)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False, float_format="%.10g")
    return output
