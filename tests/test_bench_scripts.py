"""The GPU measurement script runs against the current code (its CPU dry run).

A session lent a GPU has 15 minutes of device time for everything; a stage that broke because the
code moved on (a changed function signature) would spend it on a traceback. This runs every stage of
bench/gpu_check.sh with tiny models on the CPU, as ``GPU_CHECK_TINY=1`` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("gen", "train_gc", "metrics_fp32", "metrics_bf16", "judge", "finetune", "syncs", "train_nogc", "metrics_tf32")


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_stage(tmp_path: Path) -> None:
    env = {**os.environ, "GPU_CHECK_TINY": "1", "OUT": str(tmp_path), "PYTHON": sys.executable, "BUDGET_S": "900"}
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), str(REPO)], capture_output=True, text=True,
                            env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    status = {line.split()[0]: line.split()[1] for line in (tmp_path / "status").read_text().splitlines() if line.strip()
              and not line.startswith("total")}
    failed = {name: (tmp_path / f"{name}.log").read_text()[-1500:] for name in STAGES if status.get(name) != "ok"}
    assert not failed, failed
    summary = (tmp_path / "summary.txt").read_text()
    assert "GENERATION" in summary and "TRAINING" in summary and "JUDGE" in summary
