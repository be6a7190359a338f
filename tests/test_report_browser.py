"""The report in a real browser: headless Chromium loads the page from disk, runs its script, and
logs nothing to the console (script errors and Content-Security-Policy refusals both land there).

Chromium prints console messages to stderr with ``--enable-logging=stderr --v=0`` as lines
containing ``:CONSOLE``; the page itself logs nothing, so any such line is a problem. ``--dump-dom``
gives the DOM after the page's scripts ran. Skipped when Chromium is not installed
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import hashlib
import html as html_module
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relbench.reports.html import SCRIPT, build_report
from test_reports import CASES, make_run, sample

CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found on PATH (Debian package: chromium)")

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
)


def chromium(profile: Path, url: str, *args: str) -> tuple[str, list[str]]:
    """(stdout, console lines) of one headless Chromium run on ``url``."""
    result = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True, text=True, timeout=90, check=False,
    )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return result.stdout, console


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        sample("sdxl", "astronaut-hug-cat", 0, details={"presence": {"n_missing": 1}}, clip_t=20.0, clip_i=60.0, presence=0.5),
        sample("sdxl", "cat-on-rocket", 0, details={"presence": {"n_missing": 0}}, clip_t=30.0, clip_i=50.0, presence=1.0),
        sample("reference-collage", "astronaut-hug-cat", 0, details={"presence": {"n_missing": 0}}, clip_t=10.0, clip_i=80.0,
               presence=1.0),
        sample("reference-collage", "cat-on-rocket", 0, details={"presence": {"n_missing": 0}}, clip_t=12.0, clip_i=70.0,
               presence=1.0),
    ]
    run = make_run(tmp_path_factory.mktemp("browser") / "run", rows)
    return build_report(run).page


def test_report_runs_its_script_without_console_errors_and_renders(report: Path, tmp_path: Path) -> None:
    # "#only=..." preselects a filter, so the DOM shows the script's work.
    dom, console = chromium(tmp_path / "profile", report.as_uri() + "#only=subject_missing", "--dump-dom")
    assert console == []
    assert re.search(r'<body[^>]* data-ready="yes"', dom), "the page's script did not run"
    assert re.search(r'<body[^>]* data-filter="subject_missing"', dom)
    assert '<span id="filter-status" class="muted">showing 1 of 2 cases</span>' in dom
    board = re.search(r'<table class="leaderboard[^"]*">(.*?)</table>', dom, flags=re.S).group(1)
    assert board.count("<tr>") == 3 and ">sdxl</td>" in board
    assert len(re.findall(r"<svg ", dom)) >= 2
    assert '<div class="case" data-flags="subject_missing">' in dom
    assert re.search(r'<div class="case" data-flags="" hidden="">', dom)
    assert dom.count('<div class="case" ') == 2


def test_screenshot_shows_the_styled_page(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _, console = chromium(tmp_path / "profile", report.as_uri(), f"--screenshot={shot}", "--window-size=1200,900")
    assert console == []
    with Image.open(shot) as image:
        assert image.size == (1200, 900)
        pixels = image.convert("RGB")
        colors = pixels.getcolors(maxcolors=1 << 20)
    assert len(colors) > 50  # text, tables and plots, not a blank page
    assert any(color == (204, 0, 0) for _, color in colors)  # the tiny-profile banner's red border (CSS applied)


def test_the_console_check_sees_a_script_the_page_does_not_allow(report: Path, tmp_path: Path) -> None:
    # A changed script no longer matches the page's CSP hash: Chromium refuses it and says so.
    tampered = report.with_name("tampered.html")
    tampered.write_text(report.read_text().replace(SCRIPT, SCRIPT + "\n"))
    dom, console = chromium(tmp_path / "profile", tampered.as_uri(), "--dump-dom")
    assert any("Content Security Policy" in line for line in console)
    assert 'data-ready="yes"' not in dom


# --------------------------------------------------------------------------------------------
# Layout at 1400 px on a report the size of the demo's: 7 methods, the 14 metrics, 2 seeds.

SCREEN = (1400, 900)
DEMO_METHODS = ("sdxl", "reference-collage", "ms-diffusion", "dreamrelation", "ip-adapter", "omnigen", "dreambooth-lora")
# metric -> (typical value, spread between methods); presence and relation_acc constant: no spread, no panel.
DEMO_METRICS = {
    "clip_t": (30.0, 3.0), "clip_i": (88.0, 2.0), "dino": (90.0, 1.0), "pose": (0.4, 0.1), "clip_r": (25.0, 2.0),
    "identity_clip": (91.0, 1.0), "identity_dino": (93.0, 1.0), "presence": (1.0, 0.0), "confusion": (1.5, 0.5),
    "swap": (0.25, 0.2), "blend": (0.6, 0.2), "relation_vqa": (51.0, 0.5), "relation_acc": (100.0, 0.0),
    "relation_mc": (40.0, 20.0),
}
# Measures the laid-out page once it has loaded and leaves the numbers in the DOM for --dump-dom.
MEASURE = """
window.addEventListener('load', function () {
  function box(e) { var r = e.getBoundingClientRect(); return [r.left, r.right, r.top + window.scrollY]; }
  var out = {viewport: [document.documentElement.clientWidth, window.innerHeight],
             page_width: document.documentElement.scrollWidth};
  out.tables = [].map.call(document.querySelectorAll('table.leaderboard'), function (t) {
    return {box: box(t), scroll: t.parentElement.scrollWidth, client: t.parentElement.clientWidth};
  });
  var image = document.querySelector('div.case figure img');
  out.first_image = image ? box(image)[2] : null;
  // Then with every folded section open: the per-relation and per-category tables.
  [].forEach.call(document.querySelectorAll('details'), function (d) { d.open = true; });
  out.breakdowns = [].map.call(document.querySelectorAll('table.breakdown'), function (t) {
    return {box: box(t), scroll: t.parentElement.scrollWidth, client: t.parentElement.clientWidth};
  });
  out.open_page_width = document.documentElement.scrollWidth;
  out.panels = [].concat.apply([], [].map.call(document.querySelectorAll('svg.plot[data-panels]'), function (s) {
    return JSON.parse(s.getAttribute('data-panels'));
  }));
  out.boxes = document.querySelectorAll('.box').length;
  document.body.setAttribute('data-measure', JSON.stringify(out));
});
"""


def demo_like_rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for m, method in enumerate(DEMO_METHODS):
        for case in CASES:
            for seed in range(2):
                values = {name: round(base + spread * ((m - 3) / 3 + 0.3 * rng.standard_normal()), 4) if spread else base
                          for name, (base, spread) in DEMO_METRICS.items()}
                judge = {"relation_vqa": {"relation_shown": values["relation_vqa"] > 51},
                         "presence": {"n_missing": 0}, "confusion": {"swapped": int(values["swap"] > 0.3)}}
                rows.append(sample(method, case, seed, details=judge, **values))
    return rows


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from relbench.benchmarks import builtin_spec_path
    from relbench.hashing import file_sha256

    run = make_run(tmp_path_factory.mktemp("demo-like") / "run", demo_like_rows())
    info = json.loads((run / "run.json").read_text())
    # The demo spec's real digest: the report finds the spec, so astronaut-hug-cat gets references and boxes.
    info["benchmark"]["spec_sha256"] = file_sha256(builtin_spec_path("demo@1"))[:16]
    (run / "run.json").write_text(json.dumps(info))
    return build_report(run).page


def measured(page: Path, profile: Path, fragment: str = "") -> dict:
    """The page's layout at SCREEN size as MEASURE reports it (a copy of the page whose CSP allows MEASURE)."""
    digest = base64.b64encode(hashlib.sha256(MEASURE.encode()).digest()).decode()
    html = page.read_text()
    html = html.replace("script-src '", f"script-src 'sha256-{digest}' '", 1).replace("</body>", f"<script>{MEASURE}</script></body>")
    copy = page.with_name("measure.html")
    copy.write_text(html)
    dom, console = chromium(profile, copy.as_uri() + fragment, "--dump-dom", f"--window-size={SCREEN[0]},{SCREEN[1]}")
    assert console == []
    found = re.search(r'<body[^>]* data-measure="([^"]*)"', dom)
    assert found, "the measuring script did not run"
    return json.loads(html_module.unescape(found.group(1)))


def leaderboard_ranges(page: Path) -> dict[str, tuple[float, float]]:
    """Per metric, the smallest and largest mean or CI end the leaderboard tables show."""
    ranges: dict[str, tuple[float, float]] = {}
    for table in re.findall(r'<table class="leaderboard[^"]*">(.*?)</table>', page.read_text(), flags=re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)
        names = [re.sub(r"<[^>]+>", "", h).split()[0] for h in re.findall(r"<th[^>]*>(.*?)</th>", rows[0], flags=re.S)]
        for row in rows[1:]:
            for name, cell in zip(names, re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)):
                if name in DEMO_METRICS:
                    text = re.sub(r"<[^>]+>", " ", cell).split("n=")[0]
                    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text)]
                    low, high = ranges.get(name, (math.inf, -math.inf))
                    ranges[name] = (min(low, *numbers), max(high, *numbers))
    return ranges


def test_at_1400_px_the_leaderboard_fits_cases_come_early_and_plot_axes_fit_the_data(demo_like: Path, tmp_path: Path) -> None:
    layout = measured(demo_like, tmp_path / "profile")
    width, height = layout["viewport"][0], SCREEN[1]  # a screen: the 1400 x 900 window
    assert width == SCREEN[0]
    # No horizontal overflow: every leaderboard table inside the window and its box; nor the page.
    assert len(layout["tables"]) >= 4  # relation, identity, pose, paper metrics
    for table in layout["tables"]:
        left, right, _ = table["box"]
        assert 0 <= left and right <= width and table["scroll"] <= table["client"], table
    assert layout["page_width"] <= width
    # Nor the per-relation and per-category tables (one per metric group), once unfolded.
    assert len(layout["breakdowns"]) == 2 * len(layout["tables"])
    for table in layout["breakdowns"]:
        left, right, _ = table["box"]
        assert 0 <= left and right <= width and table["scroll"] <= table["client"], table
    assert layout["open_page_width"] <= width
    # The first generated image of the case grid within the first 3 screen heights.
    assert layout["first_image"] is not None and layout["first_image"] <= 3 * height
    # Every plotted metric's value axis: the data's range (from the leaderboard's numbers, 4 digits)
    # padded by at most 10% of it each side, never from 0 for a metric near 90.
    shown = leaderboard_ranges(demo_like)
    panels = [(panel["metric"], panel["ylim"]) for panel in layout["panels"]]
    # Constant metrics get no panel; the scatter's y axis is the headline relation_vqa.
    assert sorted(metric for metric, _ in panels) == sorted([*(set(DEMO_METRICS) - {"presence", "relation_acc"}), "relation_vqa"])
    for metric, (bottom, top) in panels:
        low, high = shown[metric]
        pad, slack = 0.1 * (high - low), 1e-3 * max(abs(low), abs(high))
        assert low - pad - slack <= bottom <= low + slack, (metric, bottom, low)
        assert high - slack <= top <= high + pad + slack, (metric, top, high)
    assert dict(panels)["identity_dino"][0] > 80


def test_layout_boxes_show_with_the_toggle(demo_like: Path, tmp_path: Path) -> None:
    html = demo_like.read_text()
    # astronaut-hug-cat is in the demo spec: 2 reference thumbnails and 2 boxes per image (7 methods x 2 seeds).
    assert html.count('<span class="box" ') == 2 * 7 * 2
    assert 'alt="reference of astronaut"' in html and 'alt="reference of cat"' in html
    assert layout_pixels(demo_like, tmp_path / "off", "") < layout_pixels(demo_like, tmp_path / "on", "#boxes")


def layout_pixels(page: Path, profile: Path, fragment: str) -> int:
    """Pixels of the first subject's box colour in a screenshot of the top 3 screens."""
    from relbench.reports.html import BOX_COLORS

    shot = profile.with_suffix(".png")
    _, console = chromium(profile, page.as_uri() + fragment, f"--screenshot={shot}", f"--window-size={SCREEN[0]},{3 * SCREEN[1]}")
    assert console == []
    red = tuple(int(BOX_COLORS[0][i:i + 2], 16) for i in (1, 3, 5))
    with Image.open(shot) as image:
        return sum(count for count, color in image.convert("RGB").getcolors(maxcolors=1 << 22) if color == red)
