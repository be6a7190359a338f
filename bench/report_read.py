"""Issue 13, host-side costs per image: reading a 10k-row run (rows of schema 1, settings inline,
vs schema 2, settings once in run.json) and writing 1024 px PNGs (zlib level 6 vs 1).

    .venv/bin/python bench/report_read.py                      # makes a real demo row first (~20 s)
    .venv/bin/python bench/report_read.py --row-from RUN_DIR   # the first row of a run (all 14 metrics)

Three parts, each measured in one run so that the figures are ratios on the same machine:

* rows: a synthetic run folder of ``--rows`` rows copied from one real row of the demo benchmark
  scored by all 14 metrics of the tiny profile (``relbench evaluate --method reference-collage
  --limit 1``): 5 methods (each its own settings hash and resolved settings), 500 cases, 4 seeds,
  jittered metric values, the real details and settings. Written twice: as relbench wrote rows
  before (schema 1: every metric's settings and the method's settings in every row) and as it
  writes them now (schema 2: rows name them by digest; run.json holds them once). Timed: file
  sizes, ``relbench.reports.tables.load_run`` (in this process) and ``relbench report DIR``
  (a fresh process: imports, reading, statistics, the page), median of ``--repeats``. "before"
  is schema 1 read with Python's garbage collector on, as relbench read it before this change
  (``collector_paused`` replaced by a no-op); "schema 1" is an old run read by this relbench.
* png: one 1024 x 1024 RGB image of uniform noise (the worst case for zlib), one smooth image
  (gradients) and one photo (the demo's astronaut, resized), encoded at zlib levels 6 (Pillow's
  default, what relbench used) and 1 (``relbench.runstore.PNG_COMPRESS_LEVEL``): ms per image
  and bytes, median of ``--png-repeats``; the decoded pixels are checked to be identical.
* overlap: ``--images`` images "generated" by a stand-in that sleeps ``--generate-ms`` (a GPU
  step releases the GIL as sleep does) and saved, serially as before (``atomic_save_image`` in the
  loop) vs on the writer thread (``relbench.runstore.ImageSaver``): wall seconds.

Nothing is left behind: the run folders and images go to a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from timing import timed

METHODS = ("sdxl", "ip-adapter", "ms-diffusion", "omnigen", "dreamrelation")
CASES, SEEDS = 500, 4
RELATIONS = ("hug", "carry", "next-to", "on-top-of", "shake-hands", "ride", "push", "hold", "lean-on", "kiss")


# --------------------------------------------------------------------------------------------
# Rows


def real_row(run_dir: Path | None, scratch: Path) -> tuple[Any, dict[str, Any]]:
    """The first row of ``run_dir`` (made by ``relbench evaluate`` when None) and its run.json."""
    from relbench.runstore import RunStore

    if run_dir is None:
        run_dir = scratch / "demo"
        relbench = [sys.executable, "-c", "import cli; cli.main()"]
        subprocess.run([*relbench, "evaluate", "--method", "reference-collage", "--benchmark", "demo", "--profile", "tiny",
                        "--limit", "1", "--output", str(run_dir), "--quiet"], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    store = RunStore(run_dir)
    rows = store.rows()
    if not rows or len(rows[0].metrics) < 14:
        raise SystemExit(f"{run_dir}: expected a row scored by the 14 metrics of the tiny profile")
    run = store.read_run() or {}
    return rows[0], {k: v for k, v in run.items() if k not in ("metric_settings", "method_settings")}


def synthetic_rows(template: Any, count: int) -> tuple[list[Any], dict[str, Any]]:
    """``count`` rows shaped like ``template`` and run.json's ``methods`` for them."""
    import dataclasses

    from relbench.hashing import settings_hash

    rng = random.Random(0)
    methods = {}
    for name in METHODS:
        requested = {"method": name, "profile": "full", "resolution": [1024, 1024], "settings": {"steps": 30, "guidance": 7.5}}
        methods[name] = {"settings_hash": settings_hash(requested), "settings": requested,
                         "resolved": {**template.method_settings, "method": name, "num_inference_steps": 30}}
    rows = []
    for index in range(count):
        name = METHODS[index % len(METHODS)]
        case = (index // len(METHODS)) % CASES
        seed = (index // (len(METHODS) * CASES)) % SEEDS
        metrics = {metric: {**result, "value": None if result["value"] is None else result["value"] * (0.5 + rng.random())}
                   for metric, result in template.metrics.items()}
        rows.append(dataclasses.replace(
            template, method=name, settings_hash=methods[name]["settings_hash"], case_id=f"case-{case:04d}", seed=seed,
            relation=RELATIONS[case % len(RELATIONS)], image=f"images/{name}/case-{case:04d}/{seed}.png",
            generation_seconds=4.0 + rng.random(), metrics=metrics, method_settings=methods[name]["resolved"],
        ))
    run_methods = {name: {"settings_hash": m["settings_hash"], "settings": m["settings"]} for name, m in methods.items()}
    return rows, run_methods


def write_run(folder: Path, rows: list[Any], run: dict[str, Any], schema: int) -> None:
    """A run folder: schema 1 as relbench wrote it before (settings inline), 2 as it writes now."""
    from relbench.rows import SettingsTable

    folder.mkdir(parents=True)
    table = SettingsTable() if schema == 2 else None
    with open(folder / "samples.jsonl", "wb") as handle:
        for row in rows:
            record = row.to_json(table)
            if schema == 1:
                record["schema"] = 1
            handle.write(json.dumps(record, default=str).encode("utf-8") + b"\n")
    (folder / "run.json").write_text(json.dumps({**run, **(table.to_run() if table is not None else {})}, indent=2))


def rows_part(args: argparse.Namespace, scratch: Path) -> None:
    from relbench.reports.tables import load_run, load_samples, read_run_info

    template, run = real_row(args.row_from, scratch)
    rows, methods = synthetic_rows(template, args.rows)
    run = {**run, "cases": [f"case-{i:04d}" for i in range(CASES)], "seeds": list(range(SEEDS)), "methods": methods}
    # The reading as it was: no pause of the garbage collector (the rows' reading is otherwise the same).
    before = "import contextlib; import relbench.reports.tables as t; t.collector_paused = contextlib.nullcontext; "
    print(f"rows: {args.rows} rows, {len(template.metrics)} metrics each, {len(METHODS)} methods x {CASES} cases x {SEEDS} seeds; "
          f"median of {args.repeats}")
    print("| rows | samples.jsonl | bytes per row | run.json | load_run s | relbench report s |")
    print("|---|---|---|---|---|---|")
    results = {}
    for label, schema, prelude in (("before: schema 1, collector on", 1, before), ("schema 1", 1, ""), ("schema 2", 2, "")):
        folder = scratch / f"schema-{schema}"
        if not folder.exists():
            write_run(folder, rows, run, schema)
        read = (lambda: load_samples(folder, read_run_info(folder))) if prelude else (lambda: load_run(folder)[1])
        load_seconds, samples = timed(read, args.repeats)
        command = [sys.executable, "-c", prelude + "import cli; cli.main()", "report", str(folder), "-o", str(scratch / "report")]
        report_seconds, _ = timed(lambda: subprocess.run(command, check=True, capture_output=True), args.repeats)
        size = (folder / "samples.jsonl").stat().st_size
        results[label] = (load_seconds, report_seconds, size, samples)
        print(f"| {label} | {size / 1e6:.1f} MB | {size / len(rows):,.0f} | {(folder / 'run.json').stat().st_size / 1e3:.0f} kB "
              f"| {load_seconds:.2f} | {report_seconds:.2f} |")
    old, new = results["before: schema 1, collector on"], results["schema 2"]
    same = all(r[3].drop(columns="run_dir").equals(new[3].drop(columns="run_dir")) for r in results.values())
    print(f"schema 2 vs before: samples.jsonl {old[2] / new[2]:.1f}x smaller, load_run {old[0] / new[0]:.1f}x faster, "
          f"relbench report {old[1] / new[1]:.1f}x faster; tables identical: {same}")


# --------------------------------------------------------------------------------------------
# PNG


def test_images(size: int) -> dict[str, Any]:
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    smooth = np.stack([255 * x, 255 * y, 127 + 100 * np.sin(6 * x + 4 * y)], axis=-1).astype(np.uint8)
    return {
        "noise": Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
        "smooth": Image.fromarray(smooth),
        "photo": Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC),
    }


def png_part(args: argparse.Namespace) -> None:
    from PIL import Image

    print(f"\npng: {args.size} x {args.size} RGB, encode to memory, median of {args.png_repeats}")
    print("| image | level 6 ms | level 1 ms | speed-up | level 6 bytes | level 1 bytes | pixels identical |")
    print("|---|---|---|---|---|---|---|")
    for name, image in test_images(args.size).items():
        figures = {}
        for level in (6, 1):
            def encode(level: int = level) -> bytes:
                buffer = io.BytesIO()
                image.save(buffer, format="PNG", compress_level=level)
                return buffer.getvalue()

            figures[level] = timed(encode, args.png_repeats)
        decoded = [Image.open(io.BytesIO(figures[level][1])).tobytes() for level in (6, 1)]
        same = decoded[0] == decoded[1] == image.tobytes()
        print(f"| {name} | {figures[6][0] * 1000:.0f} | {figures[1][0] * 1000:.0f} | {figures[6][0] / figures[1][0]:.1f}x "
              f"| {len(figures[6][1]):,} | {len(figures[1][1]):,} | {same} |")


def overlap_part(args: argparse.Namespace, scratch: Path) -> None:
    from relbench.runstore import ImageSaver, atomic_save_image

    image = test_images(args.size)["photo"]

    def generate() -> Any:
        time.sleep(args.generate_ms / 1000)
        return image.copy()

    def serial() -> None:
        for i in range(args.images):
            atomic_save_image(generate(), scratch / "serial" / f"{i}.png")

    def threaded() -> None:
        with ImageSaver() as saver:
            saves = [saver.submit(generate(), scratch / "threaded" / f"{i}.png") for i in range(args.images)]
        for save in saves:
            save.result()

    serial_seconds, _ = timed(serial, 1)
    threaded_seconds, _ = timed(threaded, 1)
    floor = args.images * args.generate_ms / 1000
    print(f"\noverlap: {args.images} photos of {args.size} px, generation stand-in {args.generate_ms} ms each "
          f"(at least {floor:.2f} s): serial save {serial_seconds:.2f} s, writer thread {threaded_seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row-from", type=Path, help="a run folder whose first row has the 14 metrics (default: make one)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--png-repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--generate-ms", type=float, default=300.0)
    parser.add_argument("--parts", default="rows,png,overlap")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    scratch = Path(tempfile.mkdtemp(prefix="relbench-report-read-"))
    try:
        if "rows" in parts:
            rows_part(args, scratch)
        if "png" in parts:
            png_part(args)
        if "overlap" in parts:
            overlap_part(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
