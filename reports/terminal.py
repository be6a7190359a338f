"""What ``relbench evaluate`` prints when it ends: the run's leaderboard as a terminal table.

The numbers are the leaderboard's (``reports.leaderboard.build_leaderboard``: the same means, CIs,
case view and headline as ``relbench report`` and ``leaderboard.csv``); this module only lays them
out: per configuration the method, n (the cases the headline metric's mean is over, of the run's
cases: a method evaluated on a subset shows its coverage), the headline metric's mean with its 95%
CI, and the paper's metrics (CLIP-T, CLIP-R, CLIP-I, DINO) that were computed. Then the
headline and case-set notes, the count of items with a failed score, and the next command.
"""

from __future__ import annotations

import io
import math
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from relbench.reports.html import PAPER_COLUMNS, config_labels
from relbench.reports.leaderboard import Board, build_leaderboard, load_runs
from relbench.reports.tables import metric_columns

MIN_WIDTH = 120  # columns of the table when the output is not a terminal (a log file, a pipe)


def number(value: Any) -> str:
    """4 significant digits; '-' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.4g}"


def with_ci(record: Mapping[str, Any], metric: str) -> str:
    """'0.5123 [0.4012, 0.6034]', the mean alone without a CI (fewer than 2 cases), '-' without a value."""
    mean, low, high = record.get(metric), record.get(f"{metric}_ci_low"), record.get(f"{metric}_ci_high")
    if number(mean) == "-":
        return "-"
    if number(low) == "-" or number(high) == "-":
        return number(mean)
    return f"{number(mean)} [{number(low)}, {number(high)}]"


def leaderboard_rows(board: Board, run_cases: int) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the terminal table (pure: tested without a terminal)."""
    table = board.table
    headline = board.headline.metric
    paper = [(label, metric) for label, metric in PAPER_COLUMNS if metric in table.columns and metric != headline]
    header = ["method", "n", *([f"{headline} (95% CI)"] if headline else []), *(label for label, _ in paper)]
    records = table.to_dict("records")
    labels = list(config_labels(table).values())  # the report's names, in the table's order (one row per configuration)
    rows = []
    for record, name in zip(records, labels):
        n = int(record[f"{headline}_n"]) if headline else int(record["n_cases"])
        rows.append([name, f"{n}/{run_cases}", *([with_ci(record, headline)] if headline else []),
                     *(number(record.get(metric)) for _, metric in paper)])
    return header, rows


def failed_items(details: Iterable[Mapping[str, Any]]) -> int:
    """Items (one ``{metric: details}`` per method, case and seed: the samples table's
    ``metric_details``) with a metric result that failed and will be retried
    (``relbench.metrics.base.RETRY_KEY`` in its details: a judge API error, ...)."""
    from relbench.metrics.base import RETRY_KEY

    return sum(
        any(isinstance(result, Mapping) and bool(result.get(RETRY_KEY)) for result in item.values())
        for item in details if isinstance(item, Mapping)
    )


def print_run_summary(run_dir: Path, echo: Callable[[str], None]) -> None:
    """The leaderboard table of one run directory, its notes, failed items and the next command."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from relbench.metrics.relation_judge import count_failed_questions, failure_line

    run_set = load_runs([run_dir])
    info = run_set.runs[0][1]
    board = build_leaderboard(run_set)
    header, rows = leaderboard_rows(board, len(info.get("cases") or []))
    bench = info.get("benchmark") or {}
    n_cases, n_seeds = len(info.get("cases") or []), len(info.get("seeds") or [])
    title = (f"{bench.get('name', '?')}@{bench.get('version', '?')}, {info.get('profile', '?')} profile, "
             f"{n_cases} case{'s' if n_cases != 1 else ''} x {n_seeds} seed{'s' if n_seeds != 1 else ''}")
    table = Table(*header, box=box.SIMPLE_HEAD)
    for column in table.columns[1:]:
        column.justify = "right"
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: a method name is never read as markup
    width = shutil.get_terminal_size((MIN_WIDTH, 24)).columns if sys.stdout.isatty() else MIN_WIDTH
    console = Console(file=io.StringIO(), width=width, highlight=False, color_system=None)
    console.print(table)
    echo(title)
    lines = [line.rstrip() for line in console.file.getvalue().splitlines()]  # without rich's padding
    while lines and not lines[-1]:
        lines.pop()
    for line in lines[1:] if lines and not lines[0] else lines:  # the box's empty top edge
        echo(line)
    if metric_columns(run_set.samples):  # without scores (--stage generate, --metrics none) there is nothing to note
        for note in board.notes():
            echo(note)
        if info.get("profile") == "tiny":
            echo("tiny profile: random tiny models, so these numbers only show that the pipeline runs")
    # The rows as loaded above (the newest version per key), not a second read of samples.jsonl.
    samples = run_set.samples
    details = list(samples["metric_details"]) if "metric_details" in samples.columns else []
    failed = failed_items(details)
    if failed:
        echo(f"failed: {failed} of {len(samples)} items have a score that failed; run the same command again to retry them")
    judge = failure_line(count_failed_questions(d for d in details if isinstance(d, dict)))  # which judge questions, and why
    if judge:
        echo(judge)
    echo(f"next: relbench report {run_dir}")
