"""The public Python API (``import relbench``): runs as tables, the leaderboard and compare the
commands print, scoring images in memory, and an import that loads no torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

import relbench
from relbench.errors import RelbenchError
from relbench.reports.leaderboard import save_csv
from relbench.reports.tables import wide_samples
from relbench.rows import Row, SettingsTable
from relbench.runstore import read_rows
from test_cli import REPO, relbench as run_cli
from test_reports import BASE_SAMPLES, make_run

# The run the tests share: two methods, two seeds, metrics that read every scoring input (prompt,
# references, relation phrase and id, the benchmark's other relations, the case id).
METRICS = ("clip_t", "clip_i", "dino", "clip_r", "presence", "relation_mc")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run, and beside it the reference-embedding cache it wrote (``embeddings/``)."""
    out = tmp_path_factory.mktemp("api") / "run"
    run_cli("evaluate", "-m", "reference-collage,sdxl", "-b", "demo", "--seeds", "0,1", "--metrics", ",".join(METRICS),
            "-o", str(out), "-q", env={"RELBENCH_EMBEDDING_CACHE": str(out.parent / "embeddings")})
    return out


@pytest.fixture
def same_cache(demo_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Score with the reference embeddings the run computed (float32 embeddings made in a batch of
    another composition may differ in the last bits, ~1e-7 relative); the rest is computed here."""
    monkeypatch.setenv("RELBENCH_EMBEDDING_CACHE", str(demo_run.parent / "embeddings"))


def stored_rows(run: Path) -> list[Row]:
    info = json.loads((run / "run.json").read_text())
    settings = SettingsTable.from_run(info, str(run / "run.json"))
    return [Row.from_json(record, f"line {i}", settings) for i, record in enumerate(read_rows(run / "samples.jsonl"))]


def test_import_relbench_imports_no_torch() -> None:
    code = (
        "import sys, relbench\n"
        "assert not [m for m in ('torch', 'pandas', 'PIL') if m in sys.modules], 'import'\n"
        "for name in relbench.__all__:\n    getattr(relbench, name)\n"
        "assert 'torch' not in sys.modules, 'names'\n"
        "relbench.load_benchmark('demo')\n"
        "relbench.Scorer(['clip_t', 'clip_i'], profile='tiny', device='cpu')\n"
        "assert 'torch' not in sys.modules, 'scorer before use'\n"
        "print(sorted(relbench.__all__))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "'load_runs'" in result.stdout and "'Scorer'" in result.stdout and "'Case'" in result.stdout


@pytest.mark.slow  # the shared run is made by the CLI in a subprocess
def test_load_runs_has_one_row_per_image_and_metric_as_samples_jsonl(demo_run: Path) -> None:
    df = relbench.load_runs(demo_run)
    rows = stored_rows(demo_run)
    assert len(rows) == 16 and len(df) == 16 * len(METRICS)
    expected = sorted(
        (r.method, r.settings_hash, r.case_id, r.seed, name, result["value"], result["higher_is_better"], r.relation,
         r.relation_kind, r.subject_categories, str(demo_run / r.image))
        for r in rows for name, result in r.metrics.items()
    )
    got = sorted(
        (d["method"], d["settings_hash"], d["case_id"], d["seed"], d["metric"], d["value"], d["higher_is_better"],
         d["relation"], d["relation_kind"], d["subject_categories"], d["image_path"])
        for d in df.to_dict("records")
    )
    assert got == expected
    assert df["details"].tolist() == [r.metrics[m]["details"] for r in rows for m in METRICS]
    wide = relbench.load_runs(demo_run, wide=True)
    assert len(wide) == 16 and wide.loc[0, "clip_t"] == rows[0].metrics["clip_t"]["value"]
    # One groupby gives the per-relation means.
    by_relation = df[df.metric == "clip_t"].groupby("relation")["value"].mean()
    hug = [r.metrics["clip_t"]["value"] for r in rows if r.relation == "hug"]
    assert by_relation["hug"] == pytest.approx(sum(hug) / len(hug), rel=1e-12)


def test_tidy_and_wide_tables_give_each_other_back_with_unscored_images(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", BASE_SAMPLES)  # the last image has no metric yet
    tidy, wide = relbench.load_runs(run), relbench.load_runs(run, wide=True)
    unscored = tidy[tidy["metric"].isna()]
    assert len(unscored) == 1 and unscored.iloc[0]["case_id"] == "cat-on-rocket" and math.isnan(unscored.iloc[0]["value"])
    assert len(tidy) == 3 * 3 + 1
    pd.testing.assert_frame_equal(wide_samples(tidy, tidy.attrs["relbench"]["metrics"]), wide)


def test_a_folder_of_runs_expands_as_relbench_report_does(tmp_path: Path) -> None:
    make_run(tmp_path / "sweep" / "b", BASE_SAMPLES[:2])
    make_run(tmp_path / "sweep" / "a", BASE_SAMPLES[2:])
    df = relbench.load_runs(tmp_path / "sweep", wide=True)
    assert df["run_dir"].tolist() == [str(tmp_path / "sweep" / "a")] * 2 + [str(tmp_path / "sweep" / "b")] * 2


def csv_text(table: pd.DataFrame, path: Path) -> str:
    return save_csv(table, path).read_text()


@pytest.mark.slow  # the shared run is made by the CLI in a subprocess
@pytest.mark.parametrize("headline", [None, "clip_i"])
def test_leaderboard_equals_the_cli_csv(demo_run: Path, tmp_path: Path, headline: str | None) -> None:
    options = ["--headline", headline] if headline else []
    result = run_cli("leaderboard", str(demo_run), "-o", str(tmp_path / "cli.csv"), *options)
    assert result.stdout.splitlines()[0].startswith(f"headline metric: {headline or 'clip_t'}")
    cli = (tmp_path / "cli.csv").read_text()
    tidy = relbench.load_runs(demo_run)
    assert csv_text(relbench.leaderboard(tidy, headline), tmp_path / "tidy.csv") == cli
    assert csv_text(relbench.leaderboard(relbench.load_runs(demo_run, wide=True), headline), tmp_path / "wide.csv") == cli
    table = relbench.leaderboard(tidy, headline)
    assert table["method"].tolist() == pd.read_csv(tmp_path / "cli.csv")["method"].tolist()
    assert table["n_images"].tolist() == [8, 8] and json.loads(table.loc[0, "settings"])["method"] == table.loc[0, "method"]


@pytest.mark.slow  # the CLI writes the CSV it is compared with
def test_leaderboard_of_filtered_rows_and_of_the_report_fixture(run_dir_csv: tuple[Path, str], tmp_path: Path) -> None:
    run, cli = run_dir_csv
    df = relbench.load_runs(run)
    assert csv_text(relbench.leaderboard(df, "pose_error", cases="all"), tmp_path / "api.csv") == cli
    hug = relbench.leaderboard(df[df.relation == "hug"], "pose_error")
    assert hug[["method", "n_images", "clip_t", "clip_t_n"]].values.tolist() == [["sdxl", 1, 20.0, 1], ["reference-collage", 1, 10.0, 1]]


@pytest.fixture
def run_dir_csv(tmp_path: Path) -> tuple[Path, str]:
    run = make_run(tmp_path / "run", BASE_SAMPLES)
    run_cli("leaderboard", str(run), "-o", str(tmp_path / "cli.csv"), "--headline", "pose_error", "--all-cases")
    return run, (tmp_path / "cli.csv").read_text()


@pytest.mark.slow  # the shared run is made by the CLI in a subprocess
def test_compare_equals_the_cli(demo_run: Path, tmp_path: Path) -> None:
    from relbench.reports.compare import comparison_table, format_comparison

    result = run_cli("compare", str(demo_run), "-a", "sdxl", "-b", "reference-collage", "-o", str(tmp_path / "cli.csv"))
    comparison = relbench.compare(relbench.load_runs(demo_run), "sdxl", "reference-collage")
    assert result.stdout.splitlines() == [*format_comparison(comparison).splitlines(), f"comparison: {tmp_path / 'cli.csv'}"]
    assert csv_text(comparison_table(comparison), tmp_path / "api.csv") == (tmp_path / "cli.csv").read_text()
    assert comparison.table["metric"].tolist() == list(METRICS) and comparison.table["n_cases"].tolist() == [4] * len(METRICS)


def test_a_table_without_its_runs_is_refused_in_one_line(tmp_path: Path) -> None:
    a = relbench.load_runs(make_run(tmp_path / "a", BASE_SAMPLES[:2]))
    b = relbench.load_runs(make_run(tmp_path / "b", BASE_SAMPLES[2:]))
    merged = pd.concat([a, b], ignore_index=True)  # pandas drops attrs that differ
    with pytest.raises(RelbenchError, match=r"does not say which runs it comes from .* relbench.load_runs\(a, b\)"):
        relbench.leaderboard(merged)
    assert len(relbench.leaderboard(relbench.load_runs(tmp_path / "a", tmp_path / "b"))) == 2
    with pytest.raises(RelbenchError, match="no run directories given"):
        relbench.load_runs()


# --------------------------------------------------------------------------------------------
# Scoring in memory


def assert_close(got: Any, want: Any, path: str = "details") -> None:
    """Equal structures whose floats agree within 1e-6 relative (everything else exactly)."""
    if isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9, nan_ok=True), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), path
        for index, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, f"{path}[{index}]")
    else:
        assert got == want, path


@pytest.mark.slow  # the shared run is made by the CLI in a subprocess
def test_score_on_the_tiny_profile_equals_what_the_cli_stored(demo_run: Path, same_cache: None) -> None:
    rows = stored_rows(demo_run)
    bench = relbench.load_benchmark("demo")
    scorer = relbench.Scorer(METRICS, profile="tiny", device="cpu")
    table = scorer(
        [demo_run / r.image for r in rows], prompts=[r.prompt or "" for r in rows], subjects=[list(r.subjects) for r in rows],
        relation=[r.relation or "" for r in rows], boxes=[bench.case(r.case_id).boxes for r in rows], benchmark=bench,
        ids=[r.case_id for r in rows],
    )
    assert table["id"].tolist() == [r.case_id for r in rows]
    # The same code path; float32 sums differ in the last bits with the batch's makeup and the
    # thread count (the run scored per generation batch, this one batch; CI runs 2 threads): 1e-6.
    for metric in METRICS:
        assert table[metric].tolist() == pytest.approx([r.metrics[metric]["value"] for r in rows], rel=1e-6, abs=1e-9), metric
    assert_close(table["metric_details"].tolist(), [{m: r.metrics[m]["details"] for m in METRICS} for r in rows])
    assert table.attrs["relbench_scores"]["clip_t"]["settings"] == rows[0].metrics["clip_t"]["settings"]
    assert table.attrs["relbench_scores"]["clip_t"]["higher_is_better"] is True


@pytest.mark.slow  # the shared run is made by the CLI in a subprocess
def test_score_three_images_in_memory_without_a_benchmark(demo_run: Path, same_cache: None) -> None:
    rows = [r for r in stored_rows(demo_run) if r.case_id == "astronaut-hug-cat"][:3]
    images = [Image.open(demo_run / r.image).convert("RGB") for r in rows]
    table = relbench.score(
        images, prompts="an astronaut hugging a cat", subjects={"astronaut": "skimage:astronaut", "cat": ["skimage:chelsea"]},
        relation="hugging", metrics=("clip_t", "clip_i", "dino", "clip_r"), profile="tiny", device="cpu",
    )
    assert table["id"].tolist() == ["image 0", "image 1", "image 2"] and table["image"].isna().all()
    for metric in ("clip_t", "clip_i", "dino", "clip_r"):
        # Three images in one batch where the run had other batches: float32 rounding apart.
        assert table[metric].tolist() == pytest.approx([r.metrics[metric]["value"] for r in rows], rel=1e-6, abs=0), metric
    assert list(table["metric_details"][0]["clip_i"]) == ["astronaut", "cat"]


def _scorer() -> Any:
    return relbench.Scorer(["clip_t", "clip_i"], profile="tiny", device="cpu")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prompts": ["a", "b"]}, r"prompts: expected one str for every image or a list of 3 \(one per image\), got \[.a., .b.\]"),
    ({"subjects": ["cat"]}, r"subjects\[0\]: 'cat': a subject id needs benchmark=..."),
    ({"subjects": ["dgo"], "benchmark": "demo"}, r"subjects\[0\]: unknown subject 'dgo'.*in demo v1"),
    ({"relation": "hugs", "benchmark": "demo"}, "relation: unknown relation 'hugs'.*Did you mean 'hug'"),
    ({"subjects": {"cat": "skimage:chelsea"}, "boxes": [(0.5, 0, 0.2, 1)]}, r"boxes\[0\]: expected x0 < x1 and y0 < y1"),
    ({"subjects": {"cat": "skimage:chelsea"}, "boxes": [(0, 0, 1, 1), (0, 0, 1, 1)]}, "image 0 has 2 boxes for 1 subjects"),
    ({"subjects": {"cat": "missing.png"}}, r"subjects\['cat'\]\[0\]: missing.png: image not found"),
])
def test_score_inputs_are_checked_in_one_line(kwargs: dict[str, Any], message: str) -> None:
    images = [Image.new("RGB", (8, 8))] * 3
    with pytest.raises(RelbenchError, match=message):
        _scorer()(images, **kwargs)


def test_scorer_names_are_checked_before_any_model_loads() -> None:
    with pytest.raises(RelbenchError, match="unknown metric 'clip_z'.*Did you mean 'clip_t'"):
        relbench.Scorer("clip_z", profile="tiny")
    with pytest.raises(RelbenchError, match="--model sdxxl=...: unknown model key"):
        relbench.Scorer("clip_t", profile="tiny", models={"sdxxl": "x"})
    with pytest.raises(RelbenchError, match="images: expected a PIL image, a file path or a non-empty list"):
        _scorer()([])
    with pytest.raises(RelbenchError, match=r"images\[0\]: .*nothing.png: image not found"):
        _scorer()(["nothing.png"])
    with pytest.raises(RelbenchError, match="--embedder-dtype: unknown precision 'fp8'"):
        relbench.Scorer("clip_t", profile="tiny", embedder_dtype="fp8")


def test_scorer_takes_the_embedder_precision() -> None:
    table = relbench.score(Image.new("RGB", (32, 32), (200, 10, 10)), prompts="a red square", metrics=("clip_t",),
                           profile="tiny", device="cpu", embedder_dtype="bfloat16")
    assert table.attrs["relbench_scores"]["clip_t"]["settings"]["dtype"] == "bfloat16"


def test_benchmark_data_classes_are_public() -> None:
    bench = relbench.load_benchmark("demo@1")
    assert isinstance(bench, relbench.Benchmark) and isinstance(bench.cases[0], relbench.Case)
    assert bench.relations["hug"].kind is relbench.RelationKind.INTERACTION
    case = relbench.Case("c", ("a", "b"), "hug", "an a hugging a b", ((0, 0, 0.5, 1), (0.5, 0, 1, 1)))
    assert case.relation == "hug" and relbench.Subject("a", "astronaut", "person", ("skimage:astronaut",)).category == "person"
