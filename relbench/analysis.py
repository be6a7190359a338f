"""Runs as pandas tables, their leaderboard and paired comparisons: the Python side of
``relbench report / leaderboard / compare`` (``relbench.load_runs``, ``relbench.leaderboard``,
``relbench.compare``).

The commands call these same functions, so a notebook gets the numbers the CSV holds. The tables
come from ``relbench.reports``: ``reports.leaderboard.load_runs`` reads and merges runs (each image
counted once), ``reports.tables`` owns the samples table and its tidy view,
``reports.leaderboard.build_leaderboard`` and ``reports.compare.compare_run_set`` the statistics.

A table from ``load_runs`` carries what the statistics need besides its rows in
``DataFrame.attrs["relbench"]`` (JSON, so ``to_parquet`` keeps it): per run its directory and the
parts of its ``run.json`` the leaderboard reads (``RUN_INFO_KEYS``, method settings, metric
directions), and the metrics in column order. pandas keeps ``attrs`` through
row filters (``df[df.relation == "hug"]``) and column selections; ``pd.concat`` of two loads drops
it: load the runs together instead (``relbench.load_runs(a, b)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError

if TYPE_CHECKING:
    import pandas as pd

    from relbench.reports.leaderboard import Board, RunSet
    from relbench.reports.stats import Comparison

ATTRS_KEY = "relbench"
# What a leaderboard or comparison reads of a run.json: the methods' settings (settings column),
# version and commit (provenance columns) and each metric's direction. Kept small: pandas deep-copies
# ``attrs`` into the result of every operation on the table.
RUN_INFO_KEYS: tuple[str, ...] = ("relbench_version", "git_commit")


def load_runs(*paths: str | Path, wide: bool = False) -> pd.DataFrame:
    """Read one or more run directories (or folders holding runs, e.g. a sweep's output, as
    ``relbench report`` expands them) into one table; an image in several runs counts once.

    Default (tidy): one row per (run, method, settings hash, case, seed, metric) with ``value``,
    ``higher_is_better`` (the metric's direction), ``details``, and the image's ``relation``,
    ``relation_kind``, ``subjects``, ``subject_categories``, ``prompt``, ``image`` (relative to
    ``run_dir``) and ``image_path``; an image no metric scored yet has one row with ``metric``
    empty. ``wide=True``: one row per image, one float column per metric and ``metric_details``
    (``relbench.reports.tables``' samples table). Either form goes into ``leaderboard`` and
    ``compare``, filtered by rows as you like.

    Example: ``relbench.load_runs("runs/demo").groupby(["relation", "metric"])["value"].mean()``.
    """
    from relbench.reports.leaderboard import load_runs as read_runs
    from relbench.reports.tables import expand_run_dirs, tidy_samples

    if not paths:
        raise RelbenchError("load_runs: no run directories given; expected at least one")
    run_set = read_runs(expand_run_dirs(paths))
    frame = run_set.samples.copy() if wide else tidy_samples(run_set.samples, run_set.directions())
    frame.attrs[ATTRS_KEY] = _run_attrs(run_set)
    return frame


def _run_attrs(run_set: RunSet) -> dict[str, Any]:
    from relbench.reports.tables import metric_columns

    runs = []
    for path, info in run_set.runs:
        slim: dict[str, Any] = {key: info[key] for key in RUN_INFO_KEYS if key in info}
        slim["methods"] = {
            name: {key: entry[key] for key in ("settings_hash", "settings") if key in entry}
            for name, entry in info.get("methods", {}).items() if isinstance(entry, dict)
        }
        slim["metrics"] = {name: {"higher_is_better": entry.get("higher_is_better")} for name, entry in info.get("metrics", {}).items()}
        runs.append([str(path), slim])
    return {"runs": runs, "metrics": metric_columns(run_set.samples)}


def run_set(frame: pd.DataFrame) -> RunSet:
    """The runs and samples table behind a table of ``load_runs`` (tidy or wide, rows filtered or not)."""
    from relbench.reports.leaderboard import RunSet
    from relbench.reports.tables import SAMPLE_COLUMNS, is_tidy, wide_samples

    attrs = frame.attrs.get(ATTRS_KEY)
    if not isinstance(attrs, dict) or not isinstance(attrs.get("runs"), list) or not attrs["runs"]:
        raise RelbenchError(
            "this table does not say which runs it comes from (DataFrame.attrs['relbench'], set by relbench.load_runs; "
            "pd.concat and merge drop it): load the runs together, relbench.load_runs(a, b), and filter its rows"
        )
    runs = [(Path(path), info) for path, info in attrs["runs"]]
    if is_tidy(frame):
        samples = wide_samples(frame, attrs.get("metrics", ()))
    else:
        missing = [c for c in SAMPLE_COLUMNS if c not in frame.columns]
        if missing:
            raise RelbenchError(f"this table lacks the column(s) {', '.join(missing)}; pass a table of relbench.load_runs")
        samples = frame
    samples = samples.reset_index(drop=True)
    samples.attrs = {}  # the statistics' many intermediate tables need no copy of it
    return RunSet(runs, samples)


def leaderboard_board(frame: pd.DataFrame, headline: str | None = None, cases: str = "common") -> Board:
    """The leaderboard with its summary and headline (``Board``): what ``relbench leaderboard`` writes and prints."""
    from relbench.reports.leaderboard import build_leaderboard
    from relbench.reports.stats import check_case_view

    return build_leaderboard(run_set(frame), headline, check_case_view(cases))


def leaderboard(frame: pd.DataFrame, headline: str | None = None, *, cases: str = "common") -> pd.DataFrame:
    """The leaderboard of a ``load_runs`` table: the rows and columns of ``relbench leaderboard``'s
    CSV (schema in ``relbench.reports.leaderboard``): per method configuration, every metric's mean
    over cases (seeds averaged within a case) with its bootstrap 95% CI, sorted by ``headline``
    (default: ``relation_vqa``, else its fallbacks). ``cases="all"``: each configuration's own
    cases instead of the cases all of them scored (``--all-cases``)."""
    return leaderboard_board(frame, headline, cases).table


def compare(
    frame: pd.DataFrame, a: str, b: str, *, metrics: Sequence[str] | None = None, headline: str | None = None
) -> Comparison:
    """Compare configurations ``a`` and ``b`` (``METHOD`` or ``METHOD@HASH``, a hash prefix is
    enough) case by case, as ``relbench compare``: ``.table`` has per metric the paired mean
    difference a - b with its bootstrap 95% CI, the sign test and ``better`` (only when the CI
    excludes 0); ``.headline`` and ``.warning`` the headline check.
    ``relbench.reports.compare.format_comparison(result)`` is the command's text."""
    from relbench.reports.compare import compare_run_set

    return compare_run_set(run_set(frame), a, b, metrics, headline)
