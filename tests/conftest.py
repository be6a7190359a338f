"""Test-wide settings: offline hub, quiet libraries, and where the shared real data is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Without this a hub lookup for a missing model hangs for minutes on a machine with no network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real data beside the checkout (read-only); CI and developers point tests at it. Override
# with RELBENCH_TEST_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("RELBENCH_TEST_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tests away from the user's data root; share one tokenizer cache across the session."""
    monkeypatch.delenv("RELBENCH_DATA_ROOT", raising=False)
    monkeypatch.delenv("RELBENCH_TRAINED_CACHE", raising=False)
    monkeypatch.delenv("RELBENCH_EMBEDDING_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "dreambench").is_dir() or not (SHARED_DATA / "dreamrelation").is_dir():
        pytest.skip(f"shared real data not found at {SHARED_DATA} (set RELBENCH_TEST_SHARED_DATA)")
    return SHARED_DATA
