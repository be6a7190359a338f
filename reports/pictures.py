"""The pictures of the report's case grid: generated images, the subjects' reference thumbnails
and the cases' layout boxes.

Two ways to put a picture on the page (``Pictures``):

* linked (the default): a generated image is linked by its path relative to the page, so the page
  works wherever the report folder and the run folder are moved together (the default report
  folder is inside the run). A reference image lives outside the run (the data root, an installed
  package), so a downscaled copy (``REFERENCE_HEIGHT`` x 2 px high, JPEG) is written into the
  report folder's ``references/`` and linked from there;
* self-contained (``relbench report --self-contained``): every picture is a downscaled JPEG inside
  the page as a ``data:`` URI (generated images ``THUMBNAIL_WIDTH`` px wide), so the one HTML file
  can be mailed or attached; the full-size images are not in it.

The layout boxes and reference files of a case come from the benchmark's spec (``case_layouts``):
run.json records the benchmark's name, version and the sha256 of its spec. A built-in benchmark's
spec is found by name and version and used when its digest matches; otherwise (a spec file of the
user's, or a changed built-in) the grid shows no references or boxes and says why. The reference
file itself is the one the run read (run.json ``inputs``), else the reference resolved against the
data root of now.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from relbench.errors import RelbenchError, output_errors

THUMBNAIL_WIDTH = 160  # px: a generated image in the grid (one seed per case)
# With several seeds a method's images sit side by side: narrower, so a case row stays short
# (4 seeds x 100 px: three methods per row at 1400 px instead of two).
SEED_WIDTHS: dict[int, int] = {1: THUMBNAIL_WIDTH, 2: 128}
MANY_SEEDS_WIDTH = 100


def thumbnail_width(n_seeds: int) -> int:
    """The grid's image width (px) for runs with ``n_seeds`` seeds per case."""
    return SEED_WIDTHS.get(max(n_seeds, 1), MANY_SEEDS_WIDTH)
REFERENCE_HEIGHT = 72  # px: a subject's reference thumbnail in a case row
EMBED_QUALITY = 80  # JPEG quality of every downscaled copy
REFERENCES_DIR = "references"  # beside the page: a linked report's reference thumbnails

Box = tuple[float, float, float, float]  # normalised x0, y0, x1, y1


@dataclass(frozen=True)
class CaseLayout:
    """What the spec says about one case: its subjects, each one's first reference file, its boxes."""

    subjects: tuple[str, ...]
    references: tuple[Path | None, ...]
    boxes: tuple[Box, ...]


@dataclass
class Layouts:
    """Per (benchmark, version, case id) its layout; ``problems``: why a benchmark has none."""

    cases: dict[tuple[str, str, str], CaseLayout] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def get(self, benchmark: Any, version: Any, case_id: Any) -> CaseLayout | None:
        return self.cases.get((str(benchmark), str(version), str(case_id)))


def _spec_file(benchmark: dict[str, Any]) -> Path:
    """The spec a run's benchmark came from, checked against its recorded digest (RelbenchError if not found)."""
    from relbench.benchmarks import builtin_spec_path, is_builtin
    from relbench.hashing import file_sha256

    name, version = benchmark.get("name"), benchmark.get("version")
    recorded = benchmark.get("spec")
    if isinstance(recorded, str) and Path(recorded).is_file():
        path = Path(recorded)
    elif isinstance(name, str) and is_builtin(name):
        path = builtin_spec_path(f"{name}@{version}")
    else:
        raise RelbenchError(f"benchmark {name} v{version}: not a built-in benchmark and run.json names no spec file")
    digest = benchmark.get("spec_sha256")
    if digest and file_sha256(path)[: len(str(digest))] != digest:
        raise RelbenchError(f"benchmark {name} v{version}: {path} has changed since the run (sha256 differs)")
    return path


def _reference_file(ref: str, inputs: dict[str, Any], spec_dir: Path | None) -> Path | None:
    from relbench.data_root import resolve_data_root, resolve_path

    entry = inputs.get(ref)
    if isinstance(entry, dict) and isinstance(entry.get("path"), str) and Path(entry["path"]).is_file():
        return Path(entry["path"])
    try:
        path = resolve_path(ref, resolve_data_root(), spec_dir)
    except RelbenchError:
        return None
    return path if path.is_file() else None


def case_layouts(runs: Sequence[tuple[Path, dict[str, Any]]]) -> Layouts:
    """The layouts of every case of the runs' benchmarks (see the module docstring)."""
    from relbench.spec import load_spec

    layouts = Layouts()
    seen: set[tuple[str, str]] = set()
    for _, info in runs:
        benchmark = info.get("benchmark") if isinstance(info.get("benchmark"), dict) else {}
        key = (str(benchmark.get("name")), str(benchmark.get("version")))
        if key in seen:
            continue
        seen.add(key)
        try:
            spec = load_spec(_spec_file(benchmark))
        except RelbenchError as error:
            layouts.problems.append(str(error))
            continue
        inputs = info.get("inputs") if isinstance(info.get("inputs"), dict) else {}
        for case in spec.cases:
            references = tuple(
                _reference_file(spec.subjects[s].images[0], inputs, spec.spec_dir) if spec.subjects[s].images else None
                for s in case.subjects
            )
            layouts.cases[(*key, case.id)] = CaseLayout(tuple(case.subjects), references, tuple(tuple(b) for b in case.boxes))
    return layouts


def _jpeg(path: Path, size: tuple[int, int]) -> bytes | None:
    """A JPEG of ``path`` fitted into ``size`` (aspect kept); None when it cannot be read."""
    from relbench.data_root import open_image

    try:
        image = open_image(path)
    except RelbenchError:
        return None
    image = image.convert("RGB")
    image.thumbnail(size)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=EMBED_QUALITY, optimize=True)
    return buffer.getvalue()


def _data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


class Pictures:
    """Sources for the page's pictures: linked files or embedded copies (module docstring)."""

    def __init__(self, page_dir: Path, self_contained: bool = False) -> None:
        self.page_dir = page_dir
        self.self_contained = self_contained
        self.written: list[Path] = []
        self._references: dict[Path, str | None] = {}

    def relative(self, path: Path) -> str:
        """``path`` as a URL relative to the page."""
        relative = os.path.relpath(path.resolve(), self.page_dir.resolve())
        return quote(Path(relative).as_posix(), safe="/")

    def generated(self, path: Path) -> tuple[str, str | None] | None:
        """(img src, link to the full image or None) of a generated image; None when it is missing."""
        if not path.is_file():
            return None
        if not self.self_contained:
            url = self.relative(path)
            return url, url
        data = _jpeg(path, (THUMBNAIL_WIDTH, 4 * THUMBNAIL_WIDTH))
        return (_data_uri(data), None) if data is not None else None

    def reference(self, path: Path | None) -> str | None:
        """The img src of a subject's reference thumbnail; None when it cannot be read."""
        if path is None:
            return None
        if path not in self._references:
            self._references[path] = self._make_reference(path)
        return self._references[path]

    def _make_reference(self, path: Path) -> str | None:
        from relbench.atomic import atomic_write_bytes
        from relbench.hashing import file_sha256

        data = _jpeg(path, (8 * REFERENCE_HEIGHT, 2 * REFERENCE_HEIGHT))  # 2x: sharp on high-density screens
        if data is None:
            return None
        if self.self_contained:
            return _data_uri(data)
        target = self.page_dir / REFERENCES_DIR / f"{file_sha256(path)[:16]}.jpg"
        with output_errors(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        self.written.append(target)
        return f"{REFERENCES_DIR}/{target.name}"
