"""The report in a real browser: headless Chromium loads the page from disk, runs its script, and
logs nothing to the console (script errors and Content-Security-Policy refusals both land there).

Chromium prints console messages to stderr with ``--enable-logging=stderr --v=0`` as lines
containing ``:CONSOLE``; the page itself logs nothing, so any such line is a problem. ``--dump-dom``
gives the DOM after the page's scripts ran. Skipped when Chromium is not installed
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from relbench.reports.html import SCRIPT, build_report
from test_reports import make_run, sample

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
    board = re.search(r'<table class="leaderboard">(.*?)</table>', dom, flags=re.S).group(1)
    assert board.count("<tr>") == 3 and ">sdxl</td>" in board
    assert len(re.findall(r"<svg ", dom)) >= 2
    shown = re.findall(r'<tr class="case" data-flags="subject_missing">.*?</tr>', dom, flags=re.S)
    assert len(shown) == 1 and shown[0].count("<img ") == 2
    assert re.search(r'<tr class="case" data-flags="" hidden="">', dom)


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
