"""Reports: run directory -> samples table -> leaderboard CSV and the HTML page."""

from __future__ import annotations

import csv
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from relbench.errors import RelbenchError
from relbench.reports.html import TINY_BANNER, write_report
from relbench.reports.leaderboard import leaderboard, merge_runs, write_leaderboard_csv
from relbench.reports.tables import SAMPLE_COLUMNS, load_run

# As relbench.runner records them in run.json: the resolved model, the metric's own settings.
METRICS = {
    "clip_t": {"model": {"id": "tiny:clip", "revision": None}, "settings": {"pooling": "eos"},
               "higher_is_better": True, "range": [-100, 100]},
    "clip_i": {"model": {"id": "tiny:clip", "revision": None}, "settings": {"pooling": "cls"},
               "higher_is_better": True, "range": [-100, 100]},
    "pose_error": {"model": None, "settings": {"detector_id": "tiny:pose"}, "higher_is_better": False, "range": [0, 1]},
}
CASES = {
    "astronaut-hug-cat": ("hug", "interaction", ["astronaut", "cat"], "an astronaut hugging a cat"),
    "cat-on-rocket": ("on-top-of", "spatial", ["cat", "rocket"], "a cat on top of a rocket"),
}
HASHES = {"sdxl": "aaaa1111", "reference-collage": "bbbb2222"}


def sample(method: str, case_id: str, seed: int, **metrics: float) -> dict[str, Any]:
    relation, kind, subjects, prompt = CASES[case_id]
    return {
        "schema": 1, "method": method, "settings_hash": HASHES[method], "benchmark": "demo",
        "benchmark_version": "1", "profile": "tiny", "case_id": case_id, "relation": relation,
        "relation_kind": kind, "subjects": subjects, "subject_categories": ["person", "animal"],
        "prompt": prompt, "seed": seed, "width": 8, "height": 8,
        "image": f"images/{method}/{case_id}/{seed}.png", "generation_seconds": 0.5,
        "metrics": {name: {"value": value, "details": {}, "settings": METRICS[name]["settings"]} for name, value in metrics.items()},
        "method_settings": {},
    }


def make_run(
    run_dir: Path,
    samples: list[dict[str, Any]],
    profile: str = "tiny",
    tail: str = "",
    metrics: dict[str, Any] | None = None,
) -> Path:
    """A run directory as the run store writes it; ``tail`` is appended raw (a truncated line)."""
    run_dir.mkdir(parents=True)
    info = {
        "schema": 1, "relbench_version": "0.1.0", "git_commit": None, "created": "2025-01-01T00:00:00",
        "benchmark": {"name": "demo", "version": "1", "spec_sha256": "5eed"},
        "profile": profile, "seeds": [0], "resolution": [8, 8], "cases": list(CASES),
        "methods": {name: {"settings_hash": h, "settings": {"steps": 2}} for name, h in HASHES.items()},
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


def test_load_run_flattens_metrics_and_skips_truncated_last_line(run_dir: Path) -> None:
    info, samples = load(run_dir)
    assert info["profile"] == "tiny"
    assert list(samples.columns) == [*SAMPLE_COLUMNS, "clip_t", "clip_i", "pose_error"]
    assert len(samples) == 4
    first = samples.iloc[0]
    assert (first["method"], first["case_id"], first["seed"]) == ("sdxl", "astronaut-hug-cat", 0)
    assert first["subjects"] == ("astronaut", "cat")
    assert first["image"] == "images/sdxl/astronaut-hug-cat/0.png"
    assert samples["clip_t"].tolist()[:3] == [20.0, 30.0, 10.0]
    assert samples["clip_i"].tolist()[:3] == [60.0, 50.0, 80.0]
    unscored = samples.iloc[3]
    assert unscored["method"] == "reference-collage"
    assert all(math.isnan(unscored[m]) for m in ("clip_t", "clip_i", "pose_error"))


def test_a_later_line_for_the_same_image_replaces_the_earlier(tmp_path: Path) -> None:
    rescored = sample("reference-collage", "cat-on-rocket", 0, clip_t=12.0, clip_i=70.0, pose_error=0.1)
    _, samples = load_run(make_run(tmp_path / "run", [*BASE_SAMPLES, rescored]))
    assert len(samples) == 4
    row = samples[(samples["method"] == "reference-collage") & (samples["case_id"] == "cat-on-rocket")]
    assert row["clip_t"].tolist() == [12.0]


def test_leaderboard_means_by_hand(run_dir: Path) -> None:
    _, samples = load(run_dir)
    table = leaderboard(samples)
    assert table["method"].tolist() == ["reference-collage", "sdxl"]  # sorted
    collage, sdxl = table.to_dict("records")
    assert (sdxl["settings_hash"], sdxl["benchmark"], sdxl["benchmark_version"], sdxl["profile"]) == (
        "aaaa1111", "demo", "1", "tiny",
    )
    assert (sdxl["n_images"], sdxl["n_scored"]) == (2, 2)
    assert sdxl["clip_t"] == pytest.approx((20 + 30) / 2)
    assert sdxl["clip_i"] == pytest.approx((60 + 50) / 2)
    assert sdxl["pose_error"] == pytest.approx((0.2 + 0.4) / 2)
    # The unscored image counts as generated but does not pull the means down.
    assert (collage["n_images"], collage["n_scored"]) == (2, 1)
    assert collage["clip_t"] == pytest.approx(10.0)
    assert collage["clip_i"] == pytest.approx(80.0)


def test_leaderboard_csv_columns_and_order(run_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "leaderboard.csv"
    with pytest.warns(UserWarning, match="truncated"):
        write_leaderboard_csv([run_dir], output)
    with output.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == [
        "method", "settings_hash", "benchmark", "benchmark_version", "profile", "n_images", "n_scored",
        "clip_t", "clip_i", "pose_error",
    ]
    assert rows[1][:7] == ["reference-collage", "bbbb2222", "demo", "1", "tiny", "2", "1"]
    assert rows[2][7:] == ["25", "55", "0.3"]  # 10 significant digits, no float noise
    assert len(rows) == 3


def test_merge_counts_a_duplicated_image_once_and_keeps_the_scored_copy(run_dir: Path, tmp_path: Path) -> None:
    run_b = make_run(
        tmp_path / "run-b",
        [
            sample("sdxl", "astronaut-hug-cat", 0, clip_t=20.0, clip_i=60.0, pose_error=0.2),  # duplicate
            sample("reference-collage", "cat-on-rocket", 0, clip_t=20.0, clip_i=40.0, pose_error=0.7),  # scored here
            sample("sdxl", "astronaut-hug-cat", 1, clip_t=40.0, clip_i=30.0, pose_error=0.6),  # new seed
        ],
    )
    with pytest.warns(UserWarning) as caught:
        table = leaderboard(merge_runs([run_dir, run_b]))
    assert any("2 image(s) appear in more than one run" in str(w.message) for w in caught)
    collage, sdxl = table.to_dict("records")
    assert (sdxl["n_images"], sdxl["n_scored"]) == (3, 3)
    assert sdxl["clip_t"] == pytest.approx((20 + 30 + 40) / 3)
    assert (collage["n_images"], collage["n_scored"]) == (2, 2)
    assert collage["clip_t"] == pytest.approx((10 + 20) / 2)
    assert collage["pose_error"] == pytest.approx((0.5 + 0.7) / 2)


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
        merge_runs([run_dir, run_b])


def test_merge_accepts_a_run_that_has_not_recorded_metric_settings_yet(run_dir: Path, tmp_path: Path) -> None:
    unscored = {name: {**entry, "settings": None} for name, entry in METRICS.items()}
    run_b = make_run(tmp_path / "run-b", [sample("sdxl", "astronaut-hug-cat", 1)], metrics=unscored)
    with pytest.warns(UserWarning, match="truncated"):
        table = leaderboard(merge_runs([run_dir, run_b]))
    assert table["n_images"].tolist() == [2, 3]


class _Cells(HTMLParser):
    """Rows of the leaderboard table: [(text, class attribute), ...] per row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str]]] = []
        self.inside = False
        self.cell: list[str] | None = None
        self.cls = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self.inside = attributes.get("class") == "leaderboard"
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


def test_report_has_leaderboard_images_and_tiny_banner(run_dir: Path) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        page = write_report(run_dir)
    assert page == run_dir / "report" / "index.html"
    html = page.read_text()

    with (run_dir / "leaderboard.csv").open() as f:
        assert [row[0] for row in csv.reader(f)] == ["method", "reference-collage", "sdxl"]

    parser = _Cells()
    parser.feed(html)
    header, collage, sdxl = parser.rows
    assert [text for text, _ in header] == ["method", "settings hash", "images", "scored", "clip_t ↑", "clip_i ↑", "pose_error ↓"]
    assert [text for text, _ in sdxl] == ["sdxl", "aaaa1111", "2", "2", "25", "55", "0.3"]
    # Best per column: highest clip_t/clip_i, lowest pose_error.
    best = {(row[0][0], header[i][0]) for row in (collage, sdxl) for i, (_, cls) in enumerate(row) if "best" in cls}
    assert best == {("sdxl", "clip_t ↑"), ("reference-collage", "clip_i ↑"), ("sdxl", "pose_error ↓")}

    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 4
    for src in sources:
        assert src.startswith("../images/")
        assert (page.parent / src).resolve().is_file()
        assert f'<a href="{src}">' in html
    assert "not scored" in html
    assert "<td>demo v1 (2 cases)</td>" in html
    assert "<tr><th>Spec sha256</th><td><code>5eed</code></td></tr>" in html
    assert "<li><code>model</code>: {&quot;id&quot;: &quot;tiny:clip&quot;, &quot;revision&quot;: null}</li>" in html
    assert "<li><code>detector_id</code>: tiny:pose</li>" in html
    assert TINY_BANNER in html
    # Self-contained: no scripts, stylesheets or anything fetched from the network.
    assert "<script" not in html and "<link" not in html and "http" not in html


def test_full_profile_has_no_tiny_banner_and_missing_image_is_shown(tmp_path: Path) -> None:
    rows = [{**s, "profile": "full"} for s in BASE_SAMPLES]
    run = make_run(tmp_path / "run", rows, profile="full")
    (run / rows[0]["image"]).unlink()
    html = write_report(run).read_text()
    assert TINY_BANNER not in html
    assert "image missing: <code>images/sdxl/astronaut-hug-cat/0.png</code>" in html
    assert len(re.findall(r"<img ", html)) == 3


def test_report_escapes_everything_from_run_files(tmp_path: Path) -> None:
    evil = sample("sdxl", "astronaut-hug-cat", 0, clip_t=1.0)
    evil["prompt"] = "<script>alert(1)</script>"
    evil["case_id"] = 'a"b<i>'
    evil["relation"] = "<b>hug</b>"
    run = make_run(tmp_path / "run", [evil])
    info = json.loads((run / "run.json").read_text())
    info["methods"]["sdxl"]["settings"] = {"note": "<img src=x onerror=alert(2)>"}
    (run / "run.json").write_text(json.dumps(info))
    html = write_report(run).read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert 'a"b<i>' not in html and "a&quot;b&lt;i&gt;" in html
    assert "<b>hug</b>" not in html


def test_run_without_samples_gives_an_empty_leaderboard(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [])
    (run / "samples.jsonl").unlink()
    _, samples = load_run(run)
    assert samples.empty and list(leaderboard(samples).columns)[:7] == [
        "method", "settings_hash", "benchmark", "benchmark_version", "profile", "n_images", "n_scored",
    ]
    assert "<img" not in write_report(run).read_text()


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
