"""Reports: run directory -> samples table -> statistics, leaderboard CSV, comparison and the HTML page."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import html as html_module
import io
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from relbench.errors import RelbenchError
from relbench.reports.compare import compare_runs, comparison_table, format_comparison, verdict
from relbench.reports.html import (
    PAPER_RESULTS, SCRIPT, TINY_BANNER, build_report, collect, parse_formats, samples_for_export,
)
from relbench.reports.leaderboard import best_mask, case_set_note, leaderboard, load_runs, write_leaderboard_csv
from relbench.reports.stats import (
    Headline, bootstrap_ci, breakdown, choose_headline, cis_overlap, compare, metric_summary, resolve_config,
)
from relbench.reports.tables import SAMPLE_COLUMNS, failure_flags, judge_metrics, load_run

# As relbench.runner records them in run.json: the resolved model, the metric's own settings.
METRICS = {
    "clip_t": {"model": {"id": "tiny:clip", "revision": None}, "settings": {"pooling": "eos"},
               "higher_is_better": True, "range": [-100, 100]},
    "clip_i": {"model": {"id": "tiny:clip", "revision": None}, "settings": {"pooling": "cls"},
               "higher_is_better": True, "range": [-100, 100]},
    "pose_error": {"model": None, "settings": {"detector_id": "tiny:pose"}, "higher_is_better": False, "range": [0, 1]},
}
CASES = {
    "astronaut-hug-cat": ("hug", "interaction", ["astronaut", "cat"], "an astronaut hugging a cat", ["person", "animal"]),
    "cat-on-rocket": ("on-top-of", "spatial", ["cat", "rocket"], "a cat on top of a rocket", ["animal", "object"]),
}
HASHES = {"sdxl": "aaaa1111", "reference-collage": "bbbb2222"}
BOOT = {"n_resamples": 999}  # fewer resamples where a test only needs the numbers to agree


def sample(method: str, case_id: str, seed: int, details: dict[str, dict[str, Any]] | None = None, **metrics: float) -> dict[str, Any]:
    relation, kind, subjects, prompt, categories = CASES[case_id]
    details = details or {}
    return {
        "schema": 1, "method": method, "settings_hash": HASHES.get(method, "cccc3333"), "benchmark": "demo",
        "benchmark_version": "1", "profile": "tiny", "case_id": case_id, "relation": relation,
        "relation_kind": kind, "subjects": subjects, "subject_categories": categories,
        "prompt": prompt, "seed": seed, "width": 8, "height": 8,
        "image": f"images/{method}/{case_id}/{seed}.png", "generation_seconds": 0.5,
        "metrics": {
            name: {"value": value, "details": details.get(name, {}), "settings": METRICS.get(name, {}).get("settings")}
            for name, value in metrics.items()
        },
        "method_settings": {},
    }


def make_run(
    run_dir: Path,
    samples: list[dict[str, Any]],
    profile: str = "tiny",
    tail: str = "",
    metrics: dict[str, Any] | None = None,
    git_commit: str | None = None,
) -> Path:
    """A run directory as the run store writes it; ``tail`` is appended raw (a truncated line)."""
    run_dir.mkdir(parents=True)
    methods = dict.fromkeys([*HASHES, *(s["method"] for s in samples)])
    info = {
        "schema": 1, "relbench_version": "0.1.0", "git_commit": git_commit, "created": "2025-01-01T00:00:00",
        "benchmark": {"name": "demo", "version": "1", "spec_sha256": "5eed"},
        "profile": profile, "seeds": [0], "resolution": [8, 8], "cases": list(CASES),
        "methods": {name: {"settings_hash": HASHES.get(name, "cccc3333"), "settings": {"steps": 2}} for name in methods},
        "metrics": METRICS if metrics is None else metrics,
        "packages": {},
    }
    (run_dir / "run.json").write_text(json.dumps(info))
    lines = [json.dumps(s) for s in samples]
    (run_dir / "samples.jsonl").write_text("\n".join(lines) + "\n" + tail)
    for i, s in enumerate(samples):
        path = run_dir / s["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 40 % 256, 100, 200)).save(path)
    return run_dir


BASE_SAMPLES = [
    sample("sdxl", "astronaut-hug-cat", 0, clip_t=20.0, clip_i=60.0, pose_error=0.2),
    sample("sdxl", "cat-on-rocket", 0, clip_t=30.0, clip_i=50.0, pose_error=0.4),
    sample("reference-collage", "astronaut-hug-cat", 0, clip_t=10.0, clip_i=80.0, pose_error=0.5),
    sample("reference-collage", "cat-on-rocket", 0),  # generated, not scored yet
]
TRUNCATED = '{"schema": 1, "method": "sdxl", "case_'


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run-a", BASE_SAMPLES, tail=TRUNCATED)


def load(run: Path):
    with pytest.warns(UserWarning, match=r"samples\.jsonl: line 5\+: ignoring a truncated last line"):
        return load_run(run)


def frame(rows: list[dict[str, Any]], tmp_path: Path, name: str = "run", metrics: dict[str, Any] | None = None) -> pd.DataFrame:
    return load_run(make_run(tmp_path / name, rows, metrics=metrics))[1]


# --------------------------------------------------------------------------------------------
# Reading runs


def test_load_run_flattens_metrics_and_skips_truncated_last_line(run_dir: Path) -> None:
    info, samples = load(run_dir)
    assert info["profile"] == "tiny"
    assert list(samples.columns) == [*SAMPLE_COLUMNS, "clip_t", "clip_i", "pose_error"]
    assert len(samples) == 4
    first = samples.iloc[0]
    assert (first["method"], first["case_id"], first["seed"]) == ("sdxl", "astronaut-hug-cat", 0)
    assert first["subjects"] == ("astronaut", "cat")
    assert first["image"] == "images/sdxl/astronaut-hug-cat/0.png"
    assert first["run_dir"] == str(run_dir)
    assert first["metric_details"] == {"clip_t": {}, "clip_i": {}, "pose_error": {}}
    assert samples["clip_t"].tolist()[:3] == [20.0, 30.0, 10.0]
    assert samples["clip_i"].tolist()[:3] == [60.0, 50.0, 80.0]
    unscored = samples.iloc[3]
    assert unscored["method"] == "reference-collage" and unscored["metric_details"] == {}
    assert all(math.isnan(unscored[m]) for m in ("clip_t", "clip_i", "pose_error"))


def test_a_later_line_for_the_same_image_replaces_the_earlier(tmp_path: Path) -> None:
    rescored = sample("reference-collage", "cat-on-rocket", 0, clip_t=12.0, clip_i=70.0, pose_error=0.1)
    _, samples = load_run(make_run(tmp_path / "run", [*BASE_SAMPLES, rescored]))
    assert len(samples) == 4
    row = samples[(samples["method"] == "reference-collage") & (samples["case_id"] == "cat-on-rocket")]
    assert row["clip_t"].tolist() == [12.0]


def test_row_directions_fill_what_run_json_does_not_say(tmp_path: Path) -> None:
    row = sample("sdxl", "cat-on-rocket", 0, clip_t=1.0, judge=1.0)
    row["metrics"]["judge"]["higher_is_better"] = True
    row["metrics"]["clip_t"]["higher_is_better"] = False  # run.json says True: run.json wins
    info, _ = load_run(make_run(tmp_path / "run", [row]))
    assert info["metrics"]["judge"]["higher_is_better"] is True
    assert info["metrics"]["clip_t"]["higher_is_better"] is True


def test_failure_flags_come_from_documented_detail_keys(tmp_path: Path) -> None:
    rows = [
        sample("sdxl", "astronaut-hug-cat", 0, details={"presence": {"n_missing": 1}, "judge": {"relation_shown": "no"}},
               presence=0.5, judge=0.1),
        sample("sdxl", "cat-on-rocket", 0, details={"presence": {"n_missing": 0, "swapped": 1}, "judge": {"relation_shown": True}},
               presence=1.0, judge=0.9),
        sample("reference-collage", "astronaut-hug-cat", 0, details={"presence": {"presence_fraction": 0.5, "blended": 0}},
               presence=0.5),
        sample("reference-collage", "cat-on-rocket", 0, details={"clip_t": {"cat": 3.0}}, clip_t=1.0),
    ]
    samples = frame(rows, tmp_path)
    flags = failure_flags(samples)
    assert list(flags.columns) == ["subject_missing", "subjects_confused", "relation_not_shown"]
    assert flags.astype(object).where(flags.notna(), None).values.tolist() == [
        [True, None, True],
        [False, True, False],
        [True, False, None],
        [None, None, None],  # no metric reports on any flag: nothing is known
    ]
    assert judge_metrics(samples) == ["judge"]
    assert choose_headline(samples).metric == "judge"  # the fallback: no relation_vqa here


# --------------------------------------------------------------------------------------------
# Statistics


def test_bootstrap_ci_matches_a_direct_numpy_percentile_bootstrap() -> None:
    values = np.array([3.0, 7.5, 1.0, 9.0, 4.0, 6.5, 2.0])
    low, high = bootstrap_ci(values, seed=123, n_resamples=999)
    rng = np.random.default_rng(123)
    means = values[rng.integers(0, values.size, (999, values.size))].mean(axis=1)
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    assert low < values.mean() < high
    # Same seed, same interval; another seed, another one.
    assert bootstrap_ci(values, seed=123, n_resamples=999) == (low, high)
    assert bootstrap_ci(values, seed=124, n_resamples=999) != (low, high)


def test_bootstrap_ci_closed_form_cases() -> None:
    assert bootstrap_ci([4.25] * 6) == (4.25, 4.25)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    # NaN values are skipped: the interval is that of the other values.
    assert bootstrap_ci([1.0, np.nan, 2.0, 4.0], **BOOT) == bootstrap_ci([1.0, 2.0, 4.0], **BOOT)


def test_seeds_are_averaged_within_a_case_before_the_bootstrap(tmp_path: Path) -> None:
    rows = [
        sample("sdxl", "astronaut-hug-cat", 0, clip_t=1.0),
        sample("sdxl", "astronaut-hug-cat", 1, clip_t=3.0),
        sample("sdxl", "astronaut-hug-cat", 2, clip_t=5.0),
        sample("sdxl", "cat-on-rocket", 0, clip_t=10.0),
    ]
    samples = frame(rows, tmp_path)
    row = metric_summary(samples, ["clip_t"], **BOOT).iloc[0]
    assert row["mean"] == pytest.approx(6.5)  # (3 + 10) / 2, not (1 + 3 + 5 + 10) / 4
    assert (row["ci_low"], row["ci_high"]) == bootstrap_ci([3.0, 10.0], **BOOT)
    assert (row["n_cases"], row["n_values"], row["n_nan"]) == (2, 4, 0)


def test_nan_values_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [
        sample("sdxl", "astronaut-hug-cat", 0, clip_t=2.0, pose_error=0.25),
        sample("sdxl", "cat-on-rocket", 0, clip_t=4.0, pose_error=None),  # no reference pose: ran, no value
        sample("sdxl", "cat-on-rocket", 1, clip_t=6.0),  # not scored with pose_error at all
    ]
    summary = metric_summary(frame(rows, tmp_path), **BOOT).set_index("metric")
    assert summary.loc["pose_error", ["mean", "n_cases", "n_values", "n_nan"]].tolist() == [0.25, 1, 1, 1]
    assert math.isnan(summary.loc["pose_error", "ci_low"])  # one case: no interval
    assert summary.loc["clip_t", ["mean", "n_cases", "n_values", "n_nan"]].tolist() == [3.5, 2, 3, 0]
    assert summary.loc["clip_i", ["n_cases", "n_values", "n_nan"]].tolist() == [0, 0, 0]


def test_breakdowns_per_relation_and_per_category(tmp_path: Path) -> None:
    rows = [
        sample("sdxl", "astronaut-hug-cat", 0, clip_t=10.0),
        sample("sdxl", "astronaut-hug-cat", 1, clip_t=20.0),
        sample("sdxl", "cat-on-rocket", 0, clip_t=40.0),
        sample("reference-collage", "astronaut-hug-cat", 0, clip_t=1.0),
    ]
    samples = frame(rows, tmp_path)
    relation = breakdown(samples, "relation", ["clip_t"], cases="all")
    assert list(relation.columns) == [
        "method", "settings_hash", "benchmark", "benchmark_version", "profile", "relation", "relation_kind", "n_cases",
        "clip_t", "clip_t_n",
    ]
    assert relation[["method", "relation", "relation_kind", "n_cases", "clip_t", "clip_t_n"]].values.tolist() == [
        ["reference-collage", "hug", "interaction", 1, 1.0, 1],
        ["sdxl", "hug", "interaction", 1, 15.0, 1],
        ["sdxl", "on-top-of", "spatial", 1, 40.0, 1],
    ]
    category = breakdown(samples, "category", ["clip_t"], cases="all")
    # astronaut-hug-cat is person + animal, cat-on-rocket animal + object: a case counts in each.
    assert category[["method", "category", "n_cases", "clip_t", "clip_t_n"]].values.tolist() == [
        ["reference-collage", "animal", 1, 1.0, 1],
        ["reference-collage", "person", 1, 1.0, 1],
        ["sdxl", "animal", 2, 27.5, 2],
        ["sdxl", "object", 1, 40.0, 1],
        ["sdxl", "person", 1, 15.0, 1],
    ]
    # The default view: only astronaut-hug-cat, the one case both methods scored, counts.
    common = breakdown(samples, "category", ["clip_t"])
    assert common[["method", "category", "n_cases", "clip_t_n"]].values.tolist() == [
        ["reference-collage", "animal", 1, 1], ["reference-collage", "person", 1, 1],
        ["sdxl", "animal", 2, 1], ["sdxl", "object", 1, 0], ["sdxl", "person", 1, 1],
    ]
    assert common["clip_t"].tolist()[2] == 15.0 and math.isnan(common["clip_t"].tolist()[3])


def test_sign_test_on_a_hand_built_example(tmp_path: Path) -> None:
    # Seven cases: a is higher in five, lower in one, tied in one.
    cases = [f"c{i}" for i in range(7)]
    a_values = [5.0, 6.0, 7.0, 8.0, 9.0, 1.0, 3.0]
    b_values = [4.0, 5.0, 6.0, 7.0, 8.0, 2.0, 3.0]
    rows = []
    for case, va, vb in zip(cases, a_values, b_values):
        for method, value in (("sdxl", va), ("reference-collage", vb)):
            rows.append({"method": method, "settings_hash": HASHES[method], "benchmark": "demo", "benchmark_version": "1",
                         "profile": "tiny", "case_id": case, "seed": 0, "clip_t": value})
    samples = pd.DataFrame(rows)
    result = compare(samples, "sdxl", "reference-collage", directions={"clip_t": True}, **BOOT)
    row = result.table.iloc[0]
    assert (row["n_cases"], row["n_a_higher"], row["n_b_higher"], row["n_ties"]) == (7, 5, 1, 1)
    # Two-sided binomial, n = 6 (the tie dropped), k = 5: P(X <= 1) + P(X >= 5) = (1 + 6 + 6 + 1) / 64.
    assert row["sign_test_p"] == pytest.approx(14 / 64)
    diffs = np.subtract(a_values, b_values)
    assert row["mean_diff"] == pytest.approx(diffs.mean())
    assert (row["diff_ci_low"], row["diff_ci_high"]) == bootstrap_ci(diffs, **BOOT) == (0.0, 1.0)
    # a's mean is higher, but the CI of a - b includes 0: no winner is named.
    assert row["better"] == "" and verdict(row) == "no difference detected"
    text = format_comparison(result)
    assert re.search(r"^clip_t .* 0\.219 +no difference detected$", text, flags=re.M), text


def _two_method_samples(tmp_path: Path, offset: float) -> pd.DataFrame:
    """Six cases; b = a - offset on clip_t (a little noise), b better on pose_error; b lacks one case."""
    rows = []
    noise = [0.3, -0.2, 0.1, 0.0, -0.1, 0.2]
    for i, n in enumerate(noise):
        case = f"case-{i}"
        rows.append({"method": "sdxl", "settings_hash": HASHES["sdxl"], "case_id": case, "clip_t": 20.0 + 3 * i, "pose_error": 0.5})
        if i < 5:
            rows.append({"method": "reference-collage", "settings_hash": HASHES["reference-collage"], "case_id": case,
                         "clip_t": 20.0 + 3 * i - offset + n, "pose_error": 0.25})
    table = pd.DataFrame(rows).assign(benchmark="demo", benchmark_version="1", profile="tiny", seed=0)
    return table


def test_compare_two_fake_methods(tmp_path: Path) -> None:
    samples = _two_method_samples(tmp_path, offset=1.0)
    result = compare(samples, "sdxl", "reference-collage@bbbb", directions={"clip_t": True, "pose_error": False}, **BOOT)
    assert (result.a, result.b) == (("sdxl", "aaaa1111"), ("reference-collage", "bbbb2222"))
    table = result.table.set_index("metric")
    assert table.loc["clip_t", "n_cases"] == 5  # only the cases both have
    assert table.loc["clip_t", "mean_diff"] == pytest.approx(1.0 - np.mean([0.3, -0.2, 0.1, 0.0, -0.1]))
    assert table.loc["clip_t", "better"] == "a"
    assert table.loc["pose_error", "mean_diff"] == pytest.approx(0.25)
    assert table.loc["pose_error", "better"] == "b"  # lower is better
    assert table.loc["pose_error", ["n_a_higher", "n_b_higher", "n_ties"]].tolist() == [5, 0, 0]
    # The two spread-out methods overlap on the headline metric (clip_t): a warning.
    assert result.headline == "clip_t"
    assert result.warning is not None and "overlap" in result.warning
    text = format_comparison(result)
    assert "a = sdxl@aaaa1111, b = reference-collage@bbbb2222" in text and "warning:" in text
    assert comparison_table(result).columns[:3].tolist() == ["a", "b", "metric"]


def test_compare_no_warning_when_the_cis_are_apart(tmp_path: Path) -> None:
    rows = [{"method": m, "settings_hash": HASHES[m], "case_id": f"c{i}", "clip_t": base + 0.1 * i}
            for m, base in (("sdxl", 50.0), ("reference-collage", 10.0)) for i in range(6)]
    samples = pd.DataFrame(rows).assign(benchmark="demo", benchmark_version="1", profile="tiny", seed=0)
    result = compare(samples, "sdxl", "reference-collage", **BOOT)
    assert result.warning is None
    assert result.headline_ci_a[0] > result.headline_ci_b[1]


def test_identical_point_intervals_are_a_tie_not_an_overlap(tmp_path: Path) -> None:
    assert not cis_overlap((100.0, 100.0), (100.0, 100.0))
    assert cis_overlap((100.0, 100.0), (90.0, 100.0)) and cis_overlap((1.0, 3.0), (2.0, 4.0))
    # Both methods score 100 on every case: CIs [100, 100] and [100, 100]; no warning, no winner.
    run = make_run(tmp_path / "run", [sample(m, c, 0, clip_t=100.0) for m in HASHES for c in CASES])
    assert 'id="ci-overlap"' not in build_report(run).page.read_text()
    result = compare_runs([run], "sdxl", "reference-collage", metrics=["clip_t"])
    assert result.headline_ci_a == result.headline_ci_b == (100.0, 100.0) and result.warning is None
    row = result.table.iloc[0].to_dict()
    assert (row["diff_ci_low"], row["diff_ci_high"], row["better"]) == (0.0, 0.0, "")
    assert verdict(row) == "no difference detected"
    assert "headline metric clip_t (fallback: the default relation_vqa was not computed in these runs): no difference " \
           "detected (95% CI of a - b [0, 0] includes 0)" in format_comparison(result)


def test_selectors_name_exactly_one_configuration(tmp_path: Path) -> None:
    samples = pd.DataFrame([
        {"method": "sdxl", "settings_hash": "aaaa1111"}, {"method": "sdxl", "settings_hash": "abcd0000"},
        {"method": "reference-collage", "settings_hash": "bbbb2222"},
    ])
    assert resolve_config(samples, "sdxl@aaa") == ("sdxl", "aaaa1111")
    assert resolve_config(samples, "reference-collage") == ("reference-collage", "bbbb2222")
    with pytest.raises(RelbenchError, match=r"'sdxl': method 'sdxl' was run with 2 settings \(aaaa1111, abcd0000\); pick one as sdxl@HASH"):
        resolve_config(samples, "sdxl")
    with pytest.raises(RelbenchError, match=r"'dreamrelation': no method 'dreamrelation' in these runs \(methods: reference-collage, sdxl\)"):
        resolve_config(samples, "dreamrelation")
    with pytest.raises(RelbenchError, match=r"no settings hash starting with 'ffff'"):
        resolve_config(samples, "sdxl@ffff")
    with pytest.raises(RelbenchError, match="name the same configuration"):
        compare(samples.assign(case_id="c", seed=0, benchmark="d", benchmark_version="1", profile="tiny"), "sdxl@aaaa", "sdxl@aaaa1")


def test_compare_runs_reads_directions_from_run_json(run_dir: Path) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        result = compare_runs([run_dir], "sdxl", "reference-collage", metrics=["clip_t", "pose_error"])
    table = result.table.set_index("metric")
    assert table["higher_is_better"].tolist() == [True, False]
    # One common case: no CI of a - b, so no winner however far apart the two values are.
    assert table.loc["clip_t", ["n_cases", "mean_diff", "better"]].tolist() == [1, 10.0, ""]
    assert table.loc["pose_error", "better"] == ""
    assert result.warning is not None and "fewer than 2 common cases" in result.warning
    assert "headline metric clip_t (fallback: the default relation_vqa was not computed in these runs): no difference detected " \
           "(fewer than 2 common cases, no CI of a - b)" in format_comparison(result)
    with pytest.warns(UserWarning), pytest.raises(RelbenchError, match=r"metric 'vqa': not in these runs"):
        compare_runs([run_dir], "sdxl", "reference-collage", metrics=["vqa"])


# --------------------------------------------------------------------------------------------
# Leaderboard


LEADERBOARD_HEADER = [
    "method", "settings", "settings_hash", "benchmark", "benchmark_version", "profile", "n_images", "n_scored", "n_cases",
    "clip_t", "clip_t_ci_low", "clip_t_ci_high", "clip_t_n", "clip_t_case_set",
    "clip_i", "clip_i_ci_low", "clip_i_ci_high", "clip_i_n", "clip_i_case_set",
    "pose_error", "pose_error_ci_low", "pose_error_ci_high", "pose_error_n", "pose_error_case_set",
    "relbench_version", "git_commit",
]


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == LEADERBOARD_HEADER
    return [dict(zip(rows[0], row)) for row in rows[1:]]


def test_leaderboard_csv_header_is_pinned(run_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "leaderboard.csv"
    with pytest.warns(UserWarning, match="truncated"):
        board = write_leaderboard_csv([run_dir], output)
    assert board.headline.metric == "clip_t"  # the fallback: no relation_vqa, no judge
    # Sorted by the headline, best first; collage scored one case (astronaut-hug-cat), sdxl two.
    sdxl, collage = read_csv_rows(output)
    assert [collage[c] for c in LEADERBOARD_HEADER[:9]] == [
        "reference-collage", '{"steps":2}', "bbbb2222", "demo", "1", "tiny", "2", "1", "2",
    ]
    # The default view: every mean over the one case both scored, each cell with its n and case set.
    assert [sdxl[c] for c in LEADERBOARD_HEADER[9:14]] == ["20", "", "", "1", "common"]
    assert [collage[c] for c in LEADERBOARD_HEADER[9:14]] == ["10", "", "", "1", "common"]
    assert [sdxl[c] for c in ("clip_i", "clip_i_n", "pose_error", "pose_error_n")] == ["60", "1", "0.2", "1"]
    assert (sdxl["relbench_version"], sdxl["git_commit"]) == ("0.1.0", "")

    # --all-cases: each method's own cases, flagged as different.
    with pytest.warns(UserWarning, match="truncated"):
        write_leaderboard_csv([run_dir], output, cases="all")
    sdxl, collage = read_csv_rows(output)
    assert [sdxl[c] for c in ("clip_t", "clip_t_n", "clip_t_case_set", "clip_i", "pose_error")] == ["25", "2", "differ", "55", "0.3"]
    assert float(sdxl["clip_t_ci_low"]) == 20.0 and float(sdxl["clip_t_ci_high"]) == 30.0  # 10 significant digits
    assert [collage[c] for c in LEADERBOARD_HEADER[9:14]] == ["10", "", "", "1", "differ"]


def test_leaderboard_means_and_cis_by_hand(run_dir: Path) -> None:
    _, samples = load(run_dir)
    table = leaderboard(samples, cases="all")
    assert list(table.columns) == LEADERBOARD_HEADER
    assert table["method"].tolist() == ["reference-collage", "sdxl"]  # no headline: by configuration
    collage, sdxl = table.to_dict("records")
    assert (sdxl["settings_hash"], sdxl["benchmark"], sdxl["benchmark_version"], sdxl["profile"]) == (
        "aaaa1111", "demo", "1", "tiny",
    )
    assert (sdxl["n_images"], sdxl["n_scored"], sdxl["n_cases"]) == (2, 2, 2)
    assert sdxl["clip_t"] == pytest.approx((20 + 30) / 2)
    assert (sdxl["clip_t_ci_low"], sdxl["clip_t_ci_high"]) == bootstrap_ci([20.0, 30.0])
    assert sdxl["pose_error"] == pytest.approx((0.2 + 0.4) / 2)
    # The unscored image counts as generated but does not pull the means down.
    assert (collage["n_images"], collage["n_scored"], collage["n_cases"]) == (2, 1, 2)
    assert collage["clip_i"] == pytest.approx(80.0)
    assert sdxl["settings"] == "" and sdxl["relbench_version"] == ""  # no run.json given


def _coverage_samples() -> pd.DataFrame:
    """On demo, sdxl scored c0-c3 and reference-collage c0-c2 (not c3); on another benchmark, ms-diffusion one case."""
    rows = [{"method": "sdxl", "benchmark": "demo", "case_id": f"c{i}", "clip_t": v} for i, v in enumerate([10.0, 20.0, 30.0, 40.0])]
    rows += [{"method": "reference-collage", "benchmark": "demo", "case_id": f"c{i}", "clip_t": v} for i, v in enumerate([15.0, 25.0, 35.0])]
    rows += [{"method": "ms-diffusion", "benchmark": "other", "case_id": "c0", "clip_t": 99.0}]
    table = pd.DataFrame(rows).assign(benchmark_version="1", profile="tiny", seed=0, run_dir=None)
    return table.assign(settings_hash=table["method"].map(lambda m: HASHES.get(m, "cccc3333")))


def test_common_cases_by_default_and_best_only_among_same_cases_with_two_or_more() -> None:
    samples = _coverage_samples()
    columns = ["method", "benchmark", "clip_t", "clip_t_n", "clip_t_case_set"]
    # Common cases (default): on demo both over c0-c2 (sdxl 20, collage 25); sorted by clip_t, best first.
    common = leaderboard(samples, headline="clip_t", directions={"clip_t": True})
    assert common[columns].values.tolist() == [
        ["reference-collage", "demo", 25.0, 3, "common"], ["sdxl", "demo", 20.0, 3, "common"], ["ms-diffusion", "other", 99.0, 1, "same"],
    ]
    # Best within demo; ms-diffusion's 99 is one case on another benchmark: not best.
    assert best_mask(common, "clip_t", True).tolist() == [True, False, False]
    assert best_mask(common, "clip_t", None).tolist() == [False, False, False]  # no direction, no best
    # --all-cases: each one's own cases (sdxl 25 over 4, collage 25 over 3): different cases, no best.
    every = leaderboard(samples, headline="clip_t", directions={"clip_t": True}, cases="all")
    assert every[columns].values.tolist() == [
        ["reference-collage", "demo", 25.0, 3, "differ"], ["sdxl", "demo", 25.0, 4, "differ"], ["ms-diffusion", "other", 99.0, 1, "same"],
    ]
    assert best_mask(every, "clip_t", True).tolist() == [False, False, False]
    assert case_set_note(metric_summary(samples, cases="all", **BOOT)).startswith(
        "clip_t: the configurations scored different cases; each mean is over that configuration's own cases"
    )
    # The same cases on both sides: both views agree and the best is marked.
    same = leaderboard(samples.loc[samples["case_id"] != "c3"], directions={"clip_t": True}, cases="all")
    assert same["clip_t_case_set"].tolist() == ["same", "same", "same"]
    assert same["method"].tolist() == ["reference-collage", "sdxl", "ms-diffusion"]  # no headline: by benchmark, method
    assert best_mask(same, "clip_t", True).tolist() == [True, False, False]


def test_leaderboard_is_sorted_by_the_headline_in_its_direction(run_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "board.csv"
    for headline, order in (("clip_i", ["reference-collage", "sdxl"]), ("pose_error", ["sdxl", "reference-collage"])):
        with pytest.warns(UserWarning, match="truncated"):
            board = write_leaderboard_csv([run_dir], output, headline=headline, cases="all")
        assert [row["method"] for row in read_csv_rows(output)] == order, headline  # clip_i 80 > 55; pose_error 0.3 < 0.5
        assert board.notes()[0] == f"headline metric: {headline} (chosen with --headline)"
    with pytest.warns(UserWarning, match="truncated"), pytest.raises(
        RelbenchError, match=r"^--headline 'relation_vqa': not computed in these runs \(metrics with values: clip_t, clip_i, pose_error\)$"
    ):
        write_leaderboard_csv([run_dir], output, headline="relation_vqa")


def test_merge_counts_a_duplicated_image_once_and_averages_seeds_per_case(run_dir: Path, tmp_path: Path) -> None:
    run_b = make_run(
        tmp_path / "run-b",
        [
            sample("sdxl", "astronaut-hug-cat", 0, clip_t=20.0, clip_i=60.0, pose_error=0.2),  # duplicate
            sample("reference-collage", "cat-on-rocket", 0, clip_t=20.0, clip_i=40.0, pose_error=0.7),  # scored here
            sample("sdxl", "astronaut-hug-cat", 1, clip_t=60.0, clip_i=30.0, pose_error=0.6),  # new seed
        ],
        git_commit="abc123",
    )
    with pytest.warns(UserWarning) as caught:
        run_set = load_runs([run_dir, run_b])
        table = leaderboard(run_set.samples, run_set.runs)
    assert any("2 image(s) appear in more than one run" in str(w.message) for w in caught)
    collage, sdxl = table.to_dict("records")
    assert (sdxl["n_images"], sdxl["n_scored"], sdxl["n_cases"]) == (3, 3, 2)
    assert sdxl["clip_t"] == pytest.approx(((20 + 60) / 2 + 30) / 2)  # per case first: 35, not 36.67
    assert (collage["n_images"], collage["n_scored"]) == (2, 2)
    assert collage["pose_error"] == pytest.approx((0.5 + 0.7) / 2)
    # Provenance: collage's images come from both runs, sdxl's too (seed 1 only in run-b).
    assert (collage["relbench_version"], collage["git_commit"]) == ("0.1.0", "abc123")
    assert sdxl["settings"] == '{"steps":2}'


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", {"id": "openai/clip-vit-large-patch14", "revision": "main"}), ("settings", {"pooling": "mean"})],
)
def test_merge_refuses_a_metric_measured_with_another_model_or_settings(
    run_dir: Path, tmp_path: Path, field: str, value: Any
) -> None:
    other = {**METRICS, "clip_t": {**METRICS["clip_t"], field: value}}
    run_b = make_run(tmp_path / "run-b", BASE_SAMPLES[:1], metrics=other)
    with pytest.warns(UserWarning), pytest.raises(RelbenchError, match=rf"run-b/run\.json: metrics\.clip_t\.{field}: differs"):
        load_runs([run_dir, run_b])


def test_merge_accepts_a_run_that_has_not_recorded_metric_settings_yet(run_dir: Path, tmp_path: Path) -> None:
    unscored = {name: {**entry, "settings": None} for name, entry in METRICS.items()}
    run_b = make_run(tmp_path / "run-b", [sample("sdxl", "astronaut-hug-cat", 1)], metrics=unscored)
    with pytest.warns(UserWarning, match="truncated"):
        table = leaderboard(load_runs([run_dir, run_b]).samples)
    assert table["n_images"].tolist() == [2, 3]


# --------------------------------------------------------------------------------------------
# HTML report


class _Cells(HTMLParser):
    """Rows of the first table with the given class: [(text, class attribute), ...] per row."""

    def __init__(self, table_class: str = "leaderboard") -> None:
        super().__init__()
        self.table_class = table_class
        self.rows: list[list[tuple[str, str]]] = []
        self.inside = False
        self.cell: list[str] | None = None
        self.cls = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self.inside = self.table_class in (attributes.get("class") or "").split()
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell, self.cls = [], attributes.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(("".join(self.cell).strip(), self.cls))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def cells(html: str, table_class: str) -> list[list[str]]:
    parser = _Cells(table_class)
    parser.feed(html)
    return [[text for text, _ in row] for row in parser.rows]


def test_report_has_leaderboard_with_cis_images_and_tiny_banner(run_dir: Path) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        page = build_report(run_dir).page
    assert page == run_dir / "report" / "index.html"
    html = page.read_text()

    with (run_dir / "leaderboard.csv").open() as f:
        assert [row[0] for row in csv.reader(f)] == ["method", "sdxl", "reference-collage"]  # by clip_t, best first

    # One table per metric group, the headline's group first (clip_t, clip_i: the paper's metrics).
    parser = _Cells()
    parser.feed(html)
    header, sdxl, collage, other_header, other_sdxl, other_collage = parser.rows
    assert [text for text, _ in header] == ["method", "clip_t ↑ (common cases)", "clip_i ↑ (common cases)"]
    assert [text for text, _ in other_header] == ["method", "pose_error ↓ (common cases)"]
    assert header[1][1] == "headline"
    assert '<table class="leaderboard group-paper">' in html and '<table class="leaderboard group-other">' in html
    # collage scored one case: both methods over that case (n=1, so no interval and no best).
    assert [text for text, _ in sdxl] == ["sdxl", "20 n=1", "60 n=1"]
    assert [text for text, _ in collage][1:] == ["10 n=1", "80 n=1"]
    assert [text for text, _ in other_sdxl] == ["sdxl", "0.2 n=1"] and other_collage[1][0] == "0.5 n=1"
    assert not any("best" in cls for row in (sdxl, collage, other_sdxl, other_collage) for _, cls in row)
    # Images, scored images and cases per configuration: with the runs' settings.
    assert cells(html, "configurations")[1] == ["sdxl", "aaaa1111", "2", "2", "2"]
    assert '<p id="headline">Headline metric: <code>clip_t</code> (fallback: the default relation_vqa was not computed ' \
           "in these runs); rows sorted by it, best first" in html
    assert "clip_t, clip_i, pose_error: the configurations scored different cases; each mean is over the cases all of " \
           "them scored" in html

    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 4
    for src in sources:
        assert src.startswith("../images/")
        assert (page.parent / src).resolve().is_file()
        assert f'<a href="{src}">' in html
    assert '<a href="../leaderboard.csv">' in html
    assert "not scored" in html
    assert "<td>demo v1 (2 cases)</td>" in html
    assert "<tr><th>Spec sha256</th><td><code>5eed</code></td></tr>" in html
    assert "<li><code>model</code>: {&quot;id&quot;: &quot;tiny:clip&quot;, &quot;revision&quot;: null}</li>" in html
    assert "<li><code>detector_id</code>: tiny:pose</li>" in html
    assert TINY_BANNER in html


def test_report_is_self_contained_with_one_hashed_script(run_dir: Path) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        html = build_report(run_dir).page.read_text()
    # Nothing fetched: no external script, stylesheet, font or image; the CSP allows only our script.
    assert "<link" not in html and "@import" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html)
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    assert scripts == [SCRIPT]
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html).group(1)
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp


def test_report_plots_are_inline_svg(run_dir: Path) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        html = build_report(run_dir).page.read_text()
    svgs = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    assert len(svgs) == 3  # dots of the two metric groups and the relation heat map; no judge metric: no scatter
    paper, other, heat = svgs
    assert 'aria-label="Paper metrics (CLIP-T, CLIP-R, CLIP-I, DINO): mean of each metric per method with 95% ' \
           'confidence intervals"' in paper
    assert ">clip_t ↑</text>" in paper and ">clip_i ↑</text>" in paper and ">pose_error ↓</text>" in other
    # Configurations by colour: the legend above the plots names them in leaderboard order.
    assert re.search(r'<p class="legend">.*sdxl.*reference-collage.*</p>', html)
    # Value axes fitted to the data: clip_t's means 20 and 10 (no CI with one case), padded by 1 each side.
    panels = json.loads(html_module.unescape(re.search(r'data-panels="([^"]+)"', paper).group(1)))
    assert panels[0] == {"metric": "clip_t", "ylim": [pytest.approx(9.0), pytest.approx(21.0)], "data": [10.0, 20.0]}
    assert ">hug</text>" in heat and ">on-top-of</text>" in heat
    # clip_t per relation, annotated, over the one case both methods scored (the common cases).
    assert ">20</text>" in heat and ">10</text>" in heat and ">30</text>" not in heat
    assert "No identity-against-relation scatter" in html
    assert "<?xml" not in html and "<metadata>" not in html
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))  # plots' ids are prefixed: no clashes


def test_report_scatter_when_identity_and_judge_metrics_exist(tmp_path: Path) -> None:
    rows = [
        sample(m, c, 0, details={"judge": {"relation_shown": v > 0.5}}, clip_t=10.0, clip_i=60.0 + 5 * i, judge=v)
        for i, (m, c, v) in enumerate([("sdxl", "astronaut-hug-cat", 0.9), ("sdxl", "cat-on-rocket", 0.2),
                                       ("reference-collage", "astronaut-hug-cat", 0.1), ("reference-collage", "cat-on-rocket", 0.3)])
    ]
    html = build_report(make_run(tmp_path / "run", rows)).page.read_text()
    svgs = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    assert len(svgs) == 4  # dots of the relation group and of clip_i (clip_t is constant: none), heat map, scatter
    assert ">identity: clip_i</text>" in svgs[3] and ">relation: judge</text>" in svgs[3]
    assert ">clip_t" not in svgs[1] and "Not plotted, the same value for every configuration and case: clip_t." in html
    # Told apart by a legend, not by names at the points.
    assert svgs[3].count(">sdxl</text>") == 1 and svgs[3].count(">reference-collage</text>") == 1
    assert '<span title="judge">judge: relation shown</span>' in html
    assert html.count('<span class="flag" title="judge">judge: relation not shown</span>') == 3
    assert "seed 0<br>judge <strong>0.9</strong><br>" in html  # the headline score under each image


def test_scatter_metrics_are_registered_and_per_subject_identity_comes_first(tmp_path: Path) -> None:
    from relbench.metrics import METRICS as REGISTERED
    from relbench.reports.html import IDENTITY_METRICS, RELATION_METRICS

    assert set(IDENTITY_METRICS) | set(RELATION_METRICS) <= set(REGISTERED.names())  # once "identity", "relation_judge"
    rows = [sample(m, c, 0, identity_dino=20.0 + 5 * i, clip_i=60.0 + i, clip_r=10.0 + i)
            for i, (m, c) in enumerate([("sdxl", "astronaut-hug-cat"), ("sdxl", "cat-on-rocket"),
                                        ("reference-collage", "astronaut-hug-cat"), ("reference-collage", "cat-on-rocket")])]
    svgs = re.findall(r"<svg .*?</svg>", build_report(make_run(tmp_path / "run", rows)).page.read_text(), flags=re.S)
    assert ">identity: identity_dino</text>" in svgs[-1] and ">relation: clip_r</text>" in svgs[-1]


def test_ci_overlap_warning_only_when_the_headline_cis_overlap(tmp_path: Path) -> None:
    def run(name: str, gap: float) -> str:
        rows = [sample(m, c, s, clip_t=base + 4 * i + s) for m, base in (("sdxl", 30.0 + gap), ("reference-collage", 30.0))
                for i, c in enumerate(CASES) for s in range(2)]
        return build_report(make_run(tmp_path / name, rows)).page.read_text()

    close = run("close", 1.0)
    assert 'id="ci-overlap"' in close
    assert "overlap</strong> on the headline metric <code>clip_t</code>: reference-collage and sdxl" in close
    assert 'id="ci-overlap"' not in run("apart", 20.0)


def test_headline_default_fallback_or_none_never_one_not_computed() -> None:
    def table(details: dict[str, Any] | None = None, **values: float) -> pd.DataFrame:
        return pd.DataFrame([{"method": "sdxl", "settings_hash": "a", "case_id": "c", "metric_details": details or {}, **values}])

    full = table({"relation_vqa": {"relation_shown": 1}, "relation_acc": {"relation_shown": 1}},
                 relation_acc=100.0, relation_vqa=80.0, clip_t=20.0)
    assert choose_headline(full) == Headline("relation_vqa", "the default")
    assert choose_headline(full, "clip_t") == Headline("clip_t", "chosen with --headline")
    fallback = "fallback: the default relation_vqa was not computed in these runs"
    # relation_vqa listed but without a value (not computed): the next judge metric, else clip_t.
    assert choose_headline(table({"relation_acc": {"relation_shown": 0}}, relation_vqa=math.nan, relation_acc=0.0)) == Headline("relation_acc", fallback)
    assert choose_headline(table(clip_t=20.0, pose=0.5)) == Headline("clip_t", fallback)
    # Neither the default nor a fallback: none (not the first metric there is).
    none = choose_headline(table(pose=0.5, clip_i=70.0))
    assert none.metric is None and none.line() == (
        "headline metric: none (the default relation_vqa and its fallbacks (another relation judge metric, clip_t) were not "
        "computed in these runs; pick one with --headline from: pose, clip_i)"
    )
    with pytest.raises(RelbenchError, match=r"^--headline 'relation_vqa': not computed in these runs \(metrics with values: pose\)$"):
        choose_headline(table(pose=0.5, relation_vqa=math.nan), "relation_vqa")


def test_report_without_a_headline_says_so_and_sorts_by_method(tmp_path: Path) -> None:
    metrics = {"pose_error": METRICS["pose_error"]}
    rows = [sample(m, c, 0, pose_error=0.1 * (i + 1)) for i, (m, c) in enumerate((m, c) for m in HASHES for c in CASES)]
    run = make_run(tmp_path / "run", rows, metrics=metrics)
    html = build_report(run).page.read_text()
    assert '<p id="headline">No headline metric (the default relation_vqa and its fallbacks' in html
    assert "pick one with --headline from: pose_error); rows sorted by method.</p>" in html
    assert [row[0] for row in cells(html, "leaderboard")[1:]] == ["reference-collage", "sdxl"]
    assert "per method and relation" not in html  # no headline: no heat map of it
    chosen = build_report(run, headline="pose_error").page.read_text()
    assert [row[0] for row in cells(chosen, "leaderboard")[1:]] == ["sdxl", "reference-collage"]  # 0.15 < 0.35
    assert "Headline metric: <code>pose_error</code> (chosen with --headline)" in chosen


def test_paper_table_only_for_full_profile_runs(run_dir: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        tiny = build_report(run_dir).page.read_text()
    assert cells(tiny, "paper") == [] and 'id="paper"' not in tiny
    assert "The paper's table is shown for full-profile runs only" in tiny
    # A tiny and a full run side by side: only the full configuration beside the paper's numbers.
    full = make_run(tmp_path / "full", [{**s, "profile": "full", "seed": 1, "image": s["image"].replace("/0.png", "/1.png")}
                                        for s in BASE_SAMPLES[:2]], profile="full")
    with pytest.warns(UserWarning, match="truncated"):
        both = build_report([run_dir, full], tmp_path / "both").page.read_text()
    assert [row[:2] for row in cells(both, "paper")[8:]] == [["this report", "sdxl (demo v1, full) (full)"]]


def test_paper_table_is_labelled_and_scaled(tmp_path: Path) -> None:
    rows = [{**s, "profile": "full"} for s in BASE_SAMPLES]
    html = build_report(make_run(tmp_path / "run", rows, profile="full")).page.read_text()
    assert "Settings may differ; not directly comparable." in html
    rows = cells(html, "paper")
    assert rows[0] == ["source", "method", "CLIP-T", "CLIP-R", "CLIP-I", "DINO"]
    assert rows[1:8] == [["paper", name, *(f"{v:.1f}" for v in values)] for name, *values in PAPER_RESULTS]
    assert rows[7] == ["paper", "DreamRelation", "28.9", "20.4", "75.4", "62.1"]
    # Ours: clip_t / clip_i are x100 already (range -100..100); no CLIP-R or DINO in this run.
    assert rows[8] == ["this report", "sdxl (full)", "20.0", "–", "60.0", "–"]


def test_paper_table_scales_a_plain_cosine_metric(tmp_path: Path) -> None:
    metrics = {**METRICS, "dino": {"model": None, "settings": {}, "higher_is_better": True, "range": [-1, 1]}}
    row = {**sample("sdxl", "cat-on-rocket", 0, dino=0.621), "profile": "full"}
    html = build_report(make_run(tmp_path / "run", [row], metrics=metrics, profile="full")).page.read_text()
    assert cells(html, "paper")[-1][-1] == "62.1"


def test_breakdown_tables_in_the_report(run_dir: Path) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        html = build_report(run_dir).page.read_text()
    # One table per metric group (the paper's metrics, then the rest), folded in <details>.
    relations = cells(html, "relations")
    assert relations[0] == ["relation", "relation kind", "method", "cases", "clip_t ↑", "clip_i ↑"]
    assert ["relation", "relation kind", "method", "cases", "pose_error ↓"] in relations
    assert '<details class="section" id="relations"><summary><h2>Per relation</h2>' in html
    # The leaderboard's view: only astronaut-hug-cat, the one case both methods scored; n per cell.
    assert ["hug", "interaction", "sdxl", "1", "20 n=1", "60 n=1"] in relations
    assert ["hug", "interaction", "sdxl", "1", "0.2 n=1"] in relations
    assert ["on-top-of", "spatial", "sdxl", "1", "– n=0", "– n=0"] in relations
    assert ["on-top-of", "spatial", "reference-collage", "1", "– n=0", "– n=0"] in relations
    categories = cells(html, "categories")
    assert ["animal", "sdxl", "2", "20 n=1", "60 n=1"] in categories and ["animal", "sdxl", "2", "0.2 n=1"] in categories
    assert ["person", "reference-collage", "1", "10 n=1", "80 n=1"] in categories
    with pytest.warns(UserWarning, match="truncated"):
        every = build_report(run_dir, cases="all").page.read_text()
    assert ["on-top-of", "spatial", "sdxl", "1", "30 n=1", "50 n=1"] in cells(every, "relations")
    assert ["animal", "sdxl", "2", "25 n=2", "55 n=2"] in cells(every, "categories")


def test_filters_are_disabled_without_flag_metrics_and_work_with_them(run_dir: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        plain = build_report(run_dir).page.read_text()
    assert plain.count(" disabled>") == 3 and "there is nothing to filter" in plain
    assert plain.count('<div class="case" data-flags="">') == 2

    rows = [
        sample("sdxl", "astronaut-hug-cat", 0, details={"presence": {"n_missing": 1}}, presence=0.5),
        sample("sdxl", "cat-on-rocket", 0, details={"presence": {"n_missing": 0, "swapped": 1}}, presence=1.0),
        sample("reference-collage", "cat-on-rocket", 0, details={"presence": {"n_missing": 0}}, presence=1.0),
    ]
    html = build_report(make_run(tmp_path / "flags", rows)).page.read_text()
    assert '<input type="checkbox" name="flag" value="subject_missing"> a subject is missing (1 cases)' in html
    assert '<input type="checkbox" name="flag" value="subjects_confused"> subjects are confused (1 cases)' in html
    assert '<input type="checkbox" name="flag" value="relation_not_shown" disabled> the relation is not shown (not measured)' in html
    assert '<div class="case" data-flags="subject_missing">' in html
    assert '<div class="case" data-flags="subjects_confused">' in html
    assert '<figure data-flags="subject_missing" style="width:160px">' in html and "&#9888; a subject is missing" in html


def test_report_escapes_everything_from_run_files_including_plot_labels(tmp_path: Path) -> None:
    hostile_method = "<img src=x onerror=alert(1)>"
    hostile_metric = 'm"<i>'
    row = sample("sdxl", "astronaut-hug-cat", 0, clip_t=1.0)
    row.update(method=hostile_method, case_id='a"b<i>', relation="<b>hug</b>", prompt="<script>alert(1)</script>",
               subjects=["<u>cat</u>"], subject_categories=["<s>animal</s>"], image="images/evil/0.png")
    row["metrics"][hostile_metric] = {"value": 2.0, "details": {}}
    other = sample("sdxl", "cat-on-rocket", 0, clip_t=3.0)
    other["metrics"][hostile_metric] = {"value": 5.0, "details": {}}  # a spread: a panel and a heat map to label
    row["profile"] = other["profile"] = "full"  # the paper table names full-profile configurations only
    run = make_run(tmp_path / "run", [row, other], profile="full")
    info = json.loads((run / "run.json").read_text())
    info["methods"][hostile_method]["settings"] = {"note": "<img src=y onerror=alert(2)>"}
    (run / "run.json").write_text(json.dumps(info))
    # Its per-relation heat map names the relation; each configuration's own cases (they share none).
    html = build_report(run, headline=hostile_metric, cases="all").page.read_text()
    for raw in ("<script>alert(1)</script>", "<img src=x", "<img src=y", 'a"b<i>', "<b>hug</b>", "<u>cat</u>",
                "<s>animal</s>", 'm"<i>'):
        assert raw not in html, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "a&quot;b&lt;i&gt;" in html
    assert "&lt;img src=y onerror=alert(2)&gt;" in html and "&lt;u&gt;cat&lt;/u&gt;" in html
    # In the leaderboard, the paper table, the breakdowns, the case grid and the plots' labels.
    assert [row[0] for row in cells(html, "leaderboard")[:3]] == ["method", "sdxl", hostile_method]  # by m"<i>: 5, 2
    assert cells(html, "paper")[9][1] == f"{hostile_method} (full)"
    assert ["<b>hug</b>", "interaction", hostile_method, "1", "2 n=1"] in cells(html, "relations")
    assert ["<b>hug</b>", "interaction", hostile_method, "1", "1 n=1"] in cells(html, "relations")
    assert '<span class="swatch" style="background:#ff7f0e"></span>&lt;img src=x onerror=alert(1)&gt;' in html  # the legend
    assert ["<s>animal</s>", hostile_method, "1", "2 n=1"] in cells(html, "categories")
    svgs = "".join(re.findall(r"<svg .*?</svg>", html, flags=re.S))
    assert ">&lt;img src=x onerror=alert(1)&gt;</text>" in svgs
    assert ">m\"&lt;i&gt;</text>" in svgs and ">&lt;b&gt;hug&lt;/b&gt;</text>" in svgs


def test_run_without_samples_gives_an_empty_leaderboard(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [])
    (run / "samples.jsonl").unlink()
    _, samples = load_run(run)
    assert samples.empty and list(leaderboard(samples).columns) == LEADERBOARD_HEADER
    html = build_report(run).page.read_text()
    assert "<img" not in html and "<svg" not in html


def test_several_runs_into_an_output_folder_with_exports(run_dir: Path, tmp_path: Path) -> None:
    run_b = make_run(tmp_path / "run-b", [sample("sdxl", "astronaut-hug-cat", 1, clip_t=40.0, clip_i=30.0, pose_error=0.6)])
    output = tmp_path / "site" / "report"
    with pytest.warns(UserWarning, match="truncated"):
        files = build_report([run_dir, run_b], output, "csv,parquet")
    assert files.page == output / "index.html" and files.leaderboard == output / "leaderboard.csv"
    assert not (run_dir / "leaderboard.csv").exists()  # the first run's own leaderboard is left alone
    html = files.page.read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 5 and all((output / src).resolve().is_file() for src in sources)
    assert '<a href="leaderboard.csv">' in html and "<code>run-a</code>, <code>run-b</code>" in html
    names = sorted(p.name for p in files.exports)
    assert names == sorted(f"{t}.{f}" for t in ("samples", "leaderboard", "per_relation", "per_category") for f in ("csv", "parquet"))

    # Parquet round trip: each file reads back as the table the report computed.
    with pytest.warns(UserWarning, match="truncated"):
        data = collect([run_dir, run_b])
    expected = {"samples": samples_for_export(data.samples, data.flags), "leaderboard": data.table,
                "per_relation": data.per_relation, "per_category": data.per_category}
    for name, table in expected.items():
        pd.testing.assert_frame_equal(pd.read_parquet(output / f"{name}.parquet"), table, check_dtype=False)
        assert pd.read_csv(output / f"{name}.csv").columns.tolist() == table.columns.tolist()
    samples = pd.read_parquet(output / "samples.parquet")
    assert len(samples) == 5 and list(samples.columns)[-3:] == ["flag_subject_missing", "flag_subjects_confused", "flag_relation_not_shown"]
    assert json.loads(samples.loc[0, "subjects"]) == ["astronaut", "cat"]
    assert samples["flag_subject_missing"].isna().all()
    board = pd.read_parquet(output / "leaderboard.parquet")
    assert board.loc[board["method"] == "sdxl", "clip_t"].item() == pytest.approx(((20 + 40) / 2 + 30) / 2)
    csv_board = pd.read_csv(output / "leaderboard.csv")
    assert np.allclose(csv_board["clip_t"], board["clip_t"]) and csv_board["method"].tolist() == board["method"].tolist()


def test_report_formats_are_checked() -> None:
    assert parse_formats("csv, parquet,csv") == ("csv", "parquet")
    assert parse_formats(None) == () and parse_formats(["parquet"]) == ("parquet",)
    with pytest.raises(RelbenchError, match=r"--format: expected csv, parquet or csv,parquet; got 'xlsx'"):
        parse_formats("csv,xlsx")


def test_full_profile_has_no_tiny_banner_and_missing_image_is_shown(tmp_path: Path) -> None:
    rows = [{**s, "profile": "full"} for s in BASE_SAMPLES]
    run = make_run(tmp_path / "run", rows, profile="full")
    (run / rows[0]["image"]).unlink()
    html = build_report(run).page.read_text()
    assert TINY_BANNER not in html
    assert "image missing: <code>images/sdxl/astronaut-hug-cat/0.png</code>" in html
    assert len(re.findall(r"<img ", html)) == 3


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(RelbenchError, match=r"not a run directory \(no run\.json\)"):
        load_run(tmp_path)
    with pytest.raises(RelbenchError, match="not a directory"):
        load_run(tmp_path / "nope")


def test_broken_middle_line_names_file_and_line(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", BASE_SAMPLES[:2])
    lines = (run / "samples.jsonl").read_text().splitlines()
    (run / "samples.jsonl").write_text("\n".join([lines[0], '{"method": "sdxl",', lines[1]]) + "\n")
    with pytest.raises(RelbenchError, match=r"run/samples\.jsonl: line 2: not a valid JSON row"):
        load_run(run)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": "0"}, r"samples\.jsonl: line 1: seed: expected an integer"),
        ({"image": "../../etc/passwd"}, r"samples\.jsonl: line 1: image: expected a path inside the run directory"),
        ({"metrics": {"clip_t": {"value": "high"}}}, r"samples\.jsonl: line 1: metrics\.clip_t\.value: expected a number"),
        ({"method": ""}, r"samples\.jsonl: line 1: method: expected a non-empty string"),
    ],
)
def test_malformed_sample_fields(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    run = make_run(tmp_path / "run", BASE_SAMPLES[:1])
    (run / "samples.jsonl").write_text(json.dumps({**BASE_SAMPLES[0], **change}) + "\n")
    with pytest.raises(RelbenchError, match=message):
        load_run(run)


def test_malformed_run_json(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", BASE_SAMPLES[:1])
    (run / "run.json").write_text("{not json")
    with pytest.raises(RelbenchError, match=r"run/run\.json: not valid JSON"):
        load_run(run)
    (run / "run.json").write_text(json.dumps({"schema": 2}))
    with pytest.raises(RelbenchError, match=r"run\.json: schema: expected 1, got 2"):
        load_run(run)


def test_rows_with_a_display_name_are_shown_under_it(tmp_path: Path) -> None:
    import json as _json

    run = make_run(tmp_path / "run", BASE_SAMPLES[:2])
    lines = (run / "samples.jsonl").read_text().splitlines()
    rows = [_json.loads(line) for line in lines]
    rows[0]["method_settings"] = {"display_name": "closed-api-v2"}
    (run / "samples.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    _, samples = load_run(run)
    assert samples["method"].tolist()[0] == "closed-api-v2"


def schema_2_copy(run: Path, to: Path) -> Path:
    """``run`` (schema-1 rows: settings inline) as the run store writes it now: the metric and
    method settings once in run.json, each row referring to them by digest."""
    from relbench.rows import Row, SettingsTable

    to.mkdir()
    table = SettingsTable()
    lines = [json.dumps(Row.from_json(json.loads(line)).to_json(table)) + "\n"
             for line in (run / "samples.jsonl").read_text().splitlines() if line.startswith("{") and line.endswith("}")]
    (to / "samples.jsonl").write_text("".join(lines))
    (to / "run.json").write_text(json.dumps({**json.loads((run / "run.json").read_text()), **table.to_run()}))
    return to


def test_a_schema_1_run_and_its_schema_2_copy_read_to_identical_tables(tmp_path: Path) -> None:
    rows = [dict(row) for row in BASE_SAMPLES]
    rows[1] = {**rows[1], "method_settings": {"display_name": "closed-api-v2", "steps": 2}}
    old = make_run(tmp_path / "old", rows)
    new = schema_2_copy(old, tmp_path / "new")
    stored = [json.loads(line) for line in (new / "samples.jsonl").read_text().splitlines()]
    # no settings repeated in the rows: each metric's settings and the method's are in run.json once
    assert all("settings" not in result and "settings_ref" in result for row in stored for result in row["metrics"].values())
    assert all("method_settings" not in row and row["schema"] == 2 for row in stored)
    info_new = json.loads((new / "run.json").read_text())
    assert sorted(map(json.dumps, info_new["metric_settings"].values())) == sorted(
        json.dumps(entry["settings"]) for entry in METRICS.values())
    assert sorted(info_new["method_settings"].values(), key=len) == [{}, {"display_name": "closed-api-v2", "steps": 2}]
    old_info, old_samples = load_run(old)
    new_info, new_samples = load_run(new)
    pd.testing.assert_frame_equal(old_samples.drop(columns="run_dir"), new_samples.drop(columns="run_dir"))
    assert new_samples["method"].tolist()[1] == "closed-api-v2"  # the display name resolved from run.json
    assert {k: v for k, v in new_info.items() if k not in ("metric_settings", "method_settings")} == old_info
    # runs merge: each run's references resolve in its own run.json (this one's lacks the others')
    other_rows = [{**sample("ip-adapter", case, 0, clip_t=5.0), "method_settings": {"display_name": "ipa"}} for case in CASES]
    other = schema_2_copy(make_run(tmp_path / "other-1", other_rows), tmp_path / "other")
    assert set(json.loads((other / "run.json").read_text())["method_settings"]).isdisjoint(info_new["method_settings"])
    merged = load_runs([new, other]).samples
    single = load_runs([old]).samples
    assert merged["method"].tolist() == [*single["method"], "ipa", "ipa"]
    assert merged["clip_t"].tolist()[-2:] == [5.0, 5.0]


def test_a_row_naming_settings_its_run_json_lacks_is_refused_naming_file_line_and_field(tmp_path: Path) -> None:
    new = schema_2_copy(make_run(tmp_path / "old", BASE_SAMPLES), tmp_path / "new")
    info = json.loads((new / "run.json").read_text())
    ref = json.loads((new / "samples.jsonl").read_text().splitlines()[0])["metrics"]["clip_t"]["settings_ref"]
    del info["metric_settings"][ref]
    (new / "run.json").write_text(json.dumps(info))
    with pytest.raises(RelbenchError) as error:
        load_run(new)
    assert str(error.value) == (f"{new / 'samples.jsonl'}: line 1: metrics.clip_t.settings_ref: no settings {ref!r} "
                                "in the run's run.json metric_settings")


def test_a_row_appended_after_run_json_was_read_resolves_by_the_run_json_of_now(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report of a running evaluation: the writer stored new settings in run.json, then appended a
    row naming them, between the report's reading of run.json and of samples.jsonl."""
    from relbench.reports import tables

    new = schema_2_copy(make_run(tmp_path / "old", BASE_SAMPLES), tmp_path / "new")
    complete = json.loads((new / "run.json").read_text())
    stale = {**complete, "metric_settings": {}}
    real_read = tables.read_run_info
    reads: list[int] = []

    def read_run_info(run_dir: Path) -> dict[str, Any]:
        reads.append(1)
        return json.loads(json.dumps(stale if len(reads) == 1 else complete))

    monkeypatch.setattr(tables, "read_run_info", read_run_info)
    _, samples = tables.load_run(new)
    assert len(reads) == 2 and samples["clip_t"].tolist()[:3] == [20.0, 30.0, 10.0]
    monkeypatch.setattr(tables, "read_run_info", real_read)


# --------------------------------------------------------------------------------------------
# Pictures, groups and plot axes


def demo_spec_run(run_dir: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    """A run whose run.json carries the demo spec's real digest: the report finds its layouts."""
    from relbench.benchmarks import builtin_spec_path
    from relbench.hashing import file_sha256

    run = make_run(run_dir, rows if rows is not None else BASE_SAMPLES[:3])
    info = json.loads((run / "run.json").read_text())
    info["benchmark"]["spec_sha256"] = file_sha256(builtin_spec_path("demo@1"))[:16]
    (run / "run.json").write_text(json.dumps(info))
    return run


def sources(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_case_rows_show_reference_thumbnails_and_layout_boxes_from_the_spec(tmp_path: Path) -> None:
    html = build_report(demo_spec_run(tmp_path / "run")).page.read_text()
    # astronaut-hug-cat is a demo case: its two subjects' references and, over each of its 2 images, its 2 boxes
    # ([0.0, 0.2, 0.55, 0.85] and [0.55, 0.26, 0.95, 0.9]); cat-on-rocket is not in the demo spec: neither.
    assert html.count('alt="reference of astronaut"') == 1 and html.count('alt="reference of cat"') == 1
    assert html.count('<span class="box" ') == 4
    assert 'style="left:0.00%;top:20.00%;width:55.00%;height:65.00%;border-color:#e6194b"' in html
    assert 'style="left:55.00%;top:26.00%;width:40.00%;height:64.00%;border-color:#1f77b4"' in html
    assert '<input type="checkbox" id="show-boxes">' in html
    refs = [src for src in sources(html) if src.startswith("references/")]
    assert len(refs) == 2
    with Image.open(Path(tmp_path / "run" / "report" / refs[0])) as thumb:
        assert thumb.format == "JPEG" and thumb.height == 144  # 2 x 72 px


def test_a_changed_or_unknown_spec_shows_no_references_and_says_why(tmp_path: Path) -> None:
    html = build_report(make_run(tmp_path / "run", BASE_SAMPLES[:2])).page.read_text()  # spec_sha256 "5eed"
    assert "reference of" not in html and '<span class="box"' not in html
    assert "No reference images or layout boxes: benchmark demo v1: " in html and "has changed since the run" in html


def test_the_default_report_works_when_moved_with_its_run(tmp_path: Path) -> None:
    run = demo_spec_run(tmp_path / "run")
    elsewhere = demo_spec_run(tmp_path / "other", [sample("sdxl", "cat-on-rocket", 1, clip_t=1.0)])
    build_report(run)
    build_report([run, elsewhere], tmp_path / "site")  # -o outside the runs: moved together with them
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("run", "other", "site"):
        shutil.move(str(tmp_path / name), str(moved / name))
    for page in (moved / "run" / "report" / "index.html", moved / "site" / "index.html"):
        found = sources(page.read_text())
        assert len(found) >= 5 and not any(src.startswith(("/", "data:", "file:")) for src in found)
        for src in found:
            assert (page.parent / src).resolve().is_file(), (page, src)


def test_self_contained_embeds_downscaled_pictures_and_links_no_file(tmp_path: Path) -> None:
    rows = [sample("sdxl", "astronaut-hug-cat", 0, clip_t=20.0), sample("sdxl", "cat-on-rocket", 0, clip_t=30.0)]
    run = demo_spec_run(tmp_path / "run", rows)
    Image.new("RGB", (640, 480), (200, 10, 10)).save(run / rows[0]["image"])  # a larger generated image
    page = build_report(run, tmp_path / "mail", self_contained=True).page
    html = page.read_text()
    found = sources(html)
    assert len(found) == 4  # 2 generated images, 2 references
    assert all(src.startswith("data:image/jpeg;base64,") for src in found)
    assert not (tmp_path / "mail" / "references").exists()
    assert "../" not in html and "<a href=\"images" not in html
    sizes = []
    for src in found:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            sizes.append(image.size)
    assert (160, 120) in sizes  # the 640 x 480 image at the thumbnail width
    assert all(width <= 160 or height == 144 for width, height in sizes)
    # The leaderboard CSV inside the page, as a download.
    csv_link = re.search(r'<a href="data:text/csv;base64,([^"]+)" download="leaderboard.csv">', html)
    assert base64.b64decode(csv_link.group(1)) == (tmp_path / "mail" / "leaderboard.csv").read_bytes()


def test_metric_groups_fit_a_screen_and_put_the_headline_first() -> None:
    from relbench.reports.groups import metric_groups

    metrics = ["clip_t", "clip_i", "dino", "pose", "clip_r", "identity_clip", "identity_dino", "presence", "confusion",
               "swap", "blend", "relation_vqa", "relation_acc", "relation_mc", "mine"]
    groups = metric_groups(metrics, judge=["my_judge"], headline="relation_acc")
    assert [(g.key, g.metrics) for g in groups] == [
        ("relation", ("relation_acc", "relation_vqa", "relation_mc")),
        ("identity", ("identity_dino", "identity_clip", "presence", "confusion", "swap", "blend")),
        ("pose", ("pose",)),
        ("paper", ("clip_t", "clip_r", "clip_i", "dino")),
        ("other", ("mine",)),
    ]
    assert [g.key for g in metric_groups(["clip_t", "pose"], [], headline="pose")] == ["pose", "paper"]
    many = metric_groups([f"m{i}" for i in range(8)] + ["my_judge"], judge=["my_judge"])
    assert [(g.key, len(g.metrics)) for g in many] == [("relation", 1), ("other", 6), ("other-2", 2)]


def test_value_axes_are_fitted_to_the_data() -> None:
    from relbench.reports.plots import fitted_limits, has_spread

    assert fitted_limits(90.0, 95.0) == pytest.approx((89.5, 95.5))  # not from 0
    assert fitted_limits(0.2, 1.0, (0.0, 1.0)) == pytest.approx((0.12, 1.0))  # not past the metric's range
    assert fitted_limits(-0.1, 0.5, (0.0, 1.0)) == pytest.approx((-0.1, 0.56))  # unless the data is
    assert not has_spread(100.0, 100.0) and has_spread(0.0, 1e-6)


def test_constant_metrics_get_no_panel_and_a_constant_heat_map_is_left_out(tmp_path: Path) -> None:
    rows = [sample(m, c, 0, clip_t=25.0, clip_i=60.0 + 10 * i) for i, (m, c) in
            enumerate((m, c) for m in HASHES for c in CASES)]
    html = build_report(make_run(tmp_path / "run", rows)).page.read_text()
    svgs = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    assert len(svgs) == 1 and ">clip_i ↑</text>" in svgs[0] and ">clip_t" not in svgs[0]
    assert "Not plotted, the same value for every configuration and case: clip_t." in html
    assert "No heat map: the headline metric has no per-relation values, or the same value in every cell." in html


def test_several_seeds_get_narrower_thumbnails(tmp_path: Path) -> None:
    one = build_report(make_run(tmp_path / "one", BASE_SAMPLES[:2])).page.read_text()
    rows = [sample("sdxl", "cat-on-rocket", seed, clip_t=1.0 + seed) for seed in range(3)]
    three = build_report(make_run(tmp_path / "three", rows)).page.read_text()
    assert one.count('<img src="../images/') == 2 and one.count('width="160" height="160"') == 2
    assert three.count('width="100" height="100"') == 3 and three.count('style="width:100px"') == 3


def test_relbench_report_self_contained_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    import cli

    run = demo_spec_run(tmp_path / "run")
    monkeypatch.setattr(sys, "argv", ["relbench", "report", str(run), "--self-contained", "-o", str(tmp_path / "mail")])
    try:
        cli.main()
    except SystemExit as exc:
        assert exc.code in (None, 0)
    assert f"report: {tmp_path / 'mail' / 'index.html'}" in capsys.readouterr().out
    found = sources((tmp_path / "mail" / "index.html").read_text())
    assert len(found) == 5 and all(src.startswith("data:image/jpeg;base64,") for src in found)
