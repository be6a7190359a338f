"""Print the foundation's figures: CLI start-up, the README main job's wall time, per-image times.

    .venv/bin/python bench/cli_and_demo.py [--repeats 5] [--output /tmp/relbench-bench]

Runs offline (tiny profile). Figures depend on the machine: report them with its description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(args: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("/tmp/relbench-bench"))
    args = parser.parse_args(argv)
    relbench = [str(Path(sys.executable).parent / "relbench")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")

    help_times = [timed([*relbench, "--help"]) for _ in range(args.repeats)]
    print(f"relbench --help: median {statistics.median(help_times):.3f} s over {args.repeats} runs")

    shutil.rmtree(args.output, ignore_errors=True)
    evaluate = timed([*relbench, "evaluate", "--method", "all", "--benchmark", "demo", "--profile", "tiny",
                      "--output", str(args.output), "--quiet"])
    report = timed([*relbench, "report", str(args.output)])
    print(f"README main job: evaluate {evaluate:.1f} s + report {report:.1f} s = {evaluate + report:.1f} s wall")

    per_method: dict[str, list[float]] = {}
    for line in (args.output / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["generation_seconds"] is not None:
            per_method.setdefault(row["method"], []).append(row["generation_seconds"])
    for method, seconds in sorted(per_method.items()):
        print(f"tiny profile, 64 px: {method}: {statistics.mean(seconds) * 1000:.1f} ms per image (n={len(seconds)})")


if __name__ == "__main__":
    main()
