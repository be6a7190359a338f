"""What `relbench evaluate` prints at its end: the leaderboard's numbers as a table, its notes and
the next command; one more method on a subset of the run's cases joins the run, its coverage shown."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import cli
from relbench.reports.leaderboard import write_leaderboard_csv

ARGS = ("--metrics", "clip_t,clip_i", "--device", "cpu", "--quiet")


def evaluate(out: Path, *args: str) -> list[str]:
    result = CliRunner().invoke(cli.app, ["evaluate", "-o", str(out), *args, *ARGS])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output.splitlines()


def table_row(lines: list[str], first: str) -> list[str]:
    (row,) = [line.split() for line in lines if line.split()[:1] == [first]]
    return row


def g(value: float) -> str:
    return f"{value:.4g}"


def test_evaluate_prints_the_leaderboard_table_then_the_next_command(tmp_path: Path) -> None:
    out = tmp_path / "run"
    lines = evaluate(out, "-m", "reference-collage")
    board = write_leaderboard_csv([out], tmp_path / "board.csv")  # the same computation as `relbench report`
    record = board.table.iloc[0]
    assert lines[1] == "demo@1, tiny profile, 4 cases x 1 seed"
    # clip_t is the headline (no judge metric ran) and so not repeated among the paper's columns.
    assert table_row(lines, "method") == ["method", "n", "clip_t", "(95%", "CI)", "CLIP-I"]
    assert table_row(lines, "reference-collage") == [
        "reference-collage", "4/4", g(record.clip_t), f"[{g(record.clip_t_ci_low)},", f"{g(record.clip_t_ci_high)}]", g(record.clip_i)]
    assert lines[-3:] == [
        "headline metric: clip_t (fallback: the default relation_vqa was not computed in these runs)",
        "tiny profile: random tiny models, so these numbers only show that the pipeline runs",
        f"next: relbench report {out}",
    ]
    assert not any(line.startswith("failed:") for line in lines)


def test_one_more_method_on_some_of_the_cases_joins_the_run_and_shows_its_coverage(tmp_path: Path) -> None:
    out = tmp_path / "run"
    evaluate(out, "-m", "reference-collage")
    lines = evaluate(out, "-m", "sdxl", "--relations", "hug")  # refused before: "different settings (cases: ...)"
    run = json.loads((out / "run.json").read_text())
    assert len(run["cases"]) == 4 and set(run["methods"]) == {"reference-collage", "sdxl"}
    # By default every mean is over the cases both methods scored: the one hug case.
    assert table_row(lines, "sdxl")[1] == "1/4" and table_row(lines, "reference-collage")[1] == "1/4"
    assert any(line.startswith("cases: clip_t, clip_i: the configurations scored different cases; each mean is over the cases "
                               "all of them scored") for line in lines)
    assert sum(1 for line in (out / "samples.jsonl").read_text().splitlines()) == 5
