"""Timing helper shared by the bench scripts (each run as ``python bench/<script>.py``)."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_with_scratch_caches(main: Callable[[list[str]], Any], argv: list[str], prefix: str) -> None:
    """Run a bench ``main`` offline with caches that start empty and stay out of the user's
    (embeddings, judge answers, tokenizer files), removed afterwards."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    scratch = tempfile.mkdtemp(prefix=prefix)
    os.environ["XDG_CACHE_HOME"] = scratch
    os.environ["RELBENCH_EMBEDDING_CACHE"] = str(Path(scratch) / "embeddings")
    try:
        main(argv)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def timed(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result
