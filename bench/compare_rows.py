"""Check that two runs of the same command gave the same rows (e.g. before and after a refactoring).

    .venv/bin/python bench/compare_rows.py /tmp/demo-before /tmp/demo-after [--ignore generation_seconds]

Compares the runs' samples.jsonl line by line as JSON: the same keys (method, settings hash, case,
seed), each row with the same fields in the same order and the same values (numbers exactly), and
the same image pixels (decoded: a PNG's compression level is not part of a result). Rows are read
with their settings resolved from run.json (``relbench.runstore.read_rows``), so a schema-1 run and
a schema-2 run compare by their settings, not by how they store them (add ``--ignore schema
generation_seconds`` to compare across the two). Fields named by --ignore (default:
generation_seconds, a timing) are not compared. Prints every difference (at most 20) and exits 1
when there is one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any


def rows(run: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
    from relbench.runstore import read_rows

    return {(row["method"], row["settings_hash"], row["case_id"], row["seed"]): row for row in read_rows(run / "samples.jsonl")}


def pixels_digest(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return hashlib.sha256(f"{image.mode} {image.size}".encode() + image.tobytes()).hexdigest()


def differences(a: Any, b: Any, where: str) -> list[str]:
    """Paths where two JSON values differ (dict key order included)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return [f"{where}: keys {list(a)} != {list(b)}"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}.{key}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if a != b and not (a != a and b != b):  # NaN == NaN here
        return [f"{where}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--ignore", nargs="*", default=["generation_seconds"], help="row fields not compared")
    args = parser.parse_args(argv)
    before, after = rows(args.before), rows(args.after)
    found: list[str] = []
    if list(before) != list(after):
        found.append(f"keys differ: only before {sorted(set(before) - set(after))}, only after {sorted(set(after) - set(before))}")
    for key in before.keys() & after.keys():
        a, b = ({k: v for k, v in row.items() if k not in args.ignore} for row in (before[key], after[key]))
        found.extend(differences(a, b, "/".join(map(str, key))))
        digests = [pixels_digest(run / row["image"]) for run, row in ((args.before, a), (args.after, b))]
        if digests[0] != digests[1]:
            found.append(f"{'/'.join(map(str, key))}: image {a['image']} differs")
    for line in found[:20]:
        print(line)
    fields = len(next(iter(before.values()), {}))
    print(f"{len(before)} rows before, {len(after)} after, {fields} fields per row; ignored: {', '.join(args.ignore) or 'none'}; "
          f"{len(found)} difference(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
