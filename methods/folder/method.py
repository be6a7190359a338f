"""``folder``: score images produced elsewhere (a closed API, another code base).

``--set folder.path=P`` names where they are:

* a folder laid out ``P/<case_id>/<seed>.png`` (``.jpg``, ``.jpeg`` or ``.webp`` also accepted;
  two files for one seed are refused as ambiguous), or
* a ``.csv`` file with the columns ``case_id,seed,file``; ``file`` is absolute or relative to the
  CSV's folder.

``--set folder.name=N`` is the name reports show for these images (default: the folder's or the
CSV's name). Rows keep the registered method name ``folder`` (so resuming, image paths and the
settings hash work as for any method) and record ``display_name`` in their method settings.

Nothing is skipped or fixed silently: a missing image is an error listing the first missing files
and how many are missing (all of them up front when the runner passes the seeds to
``check_cases``, otherwise per batch), and an image whose size differs from the run's resolution
is refused, never resized (resizing would change what the metrics see, unlike for every other
method); pass the matching ``--resolution`` instead. Alpha channels are dropped. The run store
keeps its own copy of each scored image; if the folder's images change, evaluate into a new
``--output``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError
from relbench.method import GenerationRequest, Method
from relbench.methods.folder.meta import INFO

if TYPE_CHECKING:
    from PIL import Image

# Accepted image files of the folder layout, in the order they are looked for.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
CSV_COLUMNS = ("case_id", "seed", "file")
# How many missing files an error message lists.
SHOWN_MISSING = 3


@dataclass(frozen=True)
class FolderSettings:
    # Folder laid out <path>/<case_id>/<seed>.png, or a CSV file with columns case_id,seed,file (required).
    path: str = ""
    # Name shown for these images in reports and leaderboards; "" -> the folder's or CSV's name.
    name: str = ""


class ImageSource:
    """Where the image of (case_id, seed) is, for a folder layout or a CSV mapping."""

    def __init__(self, path_setting: str):
        if not path_setting:
            raise RelbenchError("folder needs --set folder.path=DIR (laid out DIR/<case_id>/<seed>.png) or =FILE.csv (columns case_id,seed,file)")
        self.path = Path(path_setting).expanduser()
        self.mapping: dict[tuple[str, int], Path] | None = None
        if self.path.suffix.lower() == ".csv":
            if not self.path.is_file():
                raise RelbenchError(f"--set folder.path={path_setting}: CSV file not found")
            self.mapping = read_mapping(self.path)
        elif not self.path.is_dir():
            raise RelbenchError(f"--set folder.path={path_setting}: folder not found (expected a folder <case_id>/<seed>.png or a .csv file)")

    @property
    def layout(self) -> str:
        if self.mapping is not None:
            return f"rows case_id,seed,file in {self.path}"
        return f"{self.path}/<case_id>/<seed>.png"

    def find(self, case_id: str, seed: int) -> Path | None:
        """The image file of (case_id, seed), or None when there is none."""
        if self.mapping is not None:
            path = self.mapping.get((case_id, seed))
            return path if path is not None and path.is_file() else None
        found = [p for p in (self.path / case_id / f"{seed}{ext}" for ext in EXTENSIONS) if p.is_file()]
        if len(found) > 1:
            raise RelbenchError(f"{self.path / case_id}: {len(found)} images for seed {seed} ({', '.join(p.name for p in found)}); keep one")
        return found[0] if found else None

    def expected(self, case_id: str, seed: int) -> str:
        """How a missing image is named in messages."""
        if self.mapping is not None:
            path = self.mapping.get((case_id, seed))
            return str(path) if path is not None else f"{case_id} seed {seed} (no row)"
        return str(self.path / case_id / f"{seed}.png")

    def cases_with_images(self) -> set[str]:
        if self.mapping is not None:
            return {case_id for (case_id, _), path in self.mapping.items() if path.is_file()}
        return {d.name for d in self.path.iterdir() if d.is_dir() and any(f.suffix.lower() in EXTENSIONS for f in d.iterdir())}

    def check_present(self, pairs: Sequence[tuple[str, int]]) -> None:
        """Refuse when any of the (case_id, seed) pairs has no image, listing the first ones."""
        missing = [(c, s) for c, s in pairs if self.find(c, s) is None]
        if missing:
            raise self.missing_error(missing, len(pairs))

    def missing_error(self, missing: Sequence[tuple[str, int]], total: int) -> RelbenchError:
        names = [self.expected(c, s) for c, s in missing[:SHOWN_MISSING]]
        shown = ", ".join(names) + (", ..." if len(missing) > SHOWN_MISSING else "")
        return RelbenchError(f"folder: {len(missing)} of {total} images missing ({shown}); expected {self.layout}")


def read_mapping(csv_path: Path) -> dict[tuple[str, int], Path]:
    """``case_id,seed,file`` rows -> {(case_id, seed): file}, files relative to the CSV's folder."""
    mapping: dict[tuple[str, int], Path] = {}
    first_line: dict[tuple[str, int], int] = {}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if any(c not in columns for c in CSV_COLUMNS):
            raise RelbenchError(f"{csv_path}: expected the columns {','.join(CSV_COLUMNS)}; found {','.join(columns) or 'none'}")
        reader.fieldnames = columns
        for row in reader:
            line = reader.line_num
            case_id, seed_text, file = (str(row.get(c) or "").strip() for c in CSV_COLUMNS)
            if not case_id or not file:
                raise RelbenchError(f"{csv_path}: line {line}: case_id and file must not be empty")
            try:
                seed = int(seed_text)
            except ValueError:
                raise RelbenchError(f"{csv_path}: line {line}: seed {seed_text!r} is not an integer") from None
            if (case_id, seed) in mapping:
                raise RelbenchError(f"{csv_path}: line {line}: {case_id} seed {seed} is listed twice (first on line {first_line[(case_id, seed)]})")
            path = Path(file).expanduser()
            mapping[(case_id, seed)] = path if path.is_absolute() else csv_path.parent / path
            first_line[(case_id, seed)] = line
    if not mapping:
        raise RelbenchError(f"{csv_path}: no rows")
    return mapping


def display_name(settings: FolderSettings) -> str:
    if settings.name:
        return settings.name
    path = Path(settings.path)
    return path.stem if path.suffix.lower() == ".csv" else path.resolve().name


class Folder(Method):
    info = INFO
    settings_cls = FolderSettings
    min_subjects = 0  # it reads whatever was made for the case
    batch_size = 16

    @classmethod
    def settings_fingerprint(cls, settings: FolderSettings) -> dict[str, Any]:
        # The same relative path from another directory is other images.
        return {"resolved_path": str(Path(settings.path).expanduser().resolve())} if settings.path else {}

    @classmethod
    def check_cases(cls, settings: FolderSettings, benchmark: Any, cases: Sequence[Any], seeds: Sequence[int] = ()) -> None:
        """With the seeds: every (case, seed) must have its image. Without: every case must have one."""
        source = ImageSource(settings.path)
        if seeds:
            source.check_present([(case.id, int(seed)) for case in cases for seed in seeds])
            return
        present = source.cases_with_images()
        missing = [case.id for case in cases if case.id not in present]
        if missing:
            shown = ", ".join(missing[:SHOWN_MISSING]) + (", ..." if len(missing) > SHOWN_MISSING else "")
            raise RelbenchError(f"folder: {len(missing)} of {len(cases)} cases have no image ({shown}); expected {source.layout}")

    def __init__(self, context: Any, settings: FolderSettings | None = None):
        super().__init__(context, settings)
        self.source = ImageSource(self.config.path)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "display_name": display_name(self.config),
                **self.settings_fingerprint(self.config)}

    def generate(self, requests: Sequence[GenerationRequest]) -> list["Image.Image"]:
        from PIL import Image

        for request in requests:
            self.check_request(request)
        paths = [self.source.find(r.case_id, r.seed) for r in requests]
        missing = [(r.case_id, r.seed) for r, path in zip(requests, paths) if path is None]
        if missing:
            raise self.source.missing_error(missing, len(requests))
        images = []
        for r, path in zip(requests, paths):
            try:
                with Image.open(path) as opened:
                    image = opened.convert("RGB")
            except OSError as exc:
                raise RelbenchError(f"{path}: not a readable image ({' '.join(str(exc).split())})") from exc
            if image.size != (r.width, r.height):
                w, h = image.size
                fix = f"pass --resolution {w} if all images are {w}x{h}" if w == h else "provide square images of that size"
                raise RelbenchError(
                    f"{path}: image is {w}x{h}, the run's resolution is {r.width}x{r.height}; folder never resizes: {fix}"
                )
            images.append(image)
        return images
