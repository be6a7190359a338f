"""Exemplars of a relation: the images ReVersion inverts ``<R>`` from, each with coarse descriptions.

An exemplar is an image in which the relation holds and one or more coarse descriptions of it
with ``{}`` where the relation goes ("cat {} box"): the descriptions are the training prompts,
and their entity words are the steering loss's negatives. Three places provide them:

* a **ReVersion folder** (the layout of the authors' benchmark, ``reversion_benchmark_v1/<relation>/``):
  images plus ``text.json`` mapping each image's file name to its descriptions,
  ``{"0.jpg": ["cat {} box", "a cat {} a box"]}``;
* a **DreamRelation relation folder** (``<relation>/prompts.json`` + ``videos/<i>/motion.png``):
  each relation image ``motion.png`` with the entities of ``prompts.json`` -> "lion {} polar bear";
* a benchmark relation's ``reference_poses[*].image`` (relationbench's ``hug`` and ``shake_hands``
  point at DreamRelation's motion images): descriptions come from a ``text.json`` beside the
  image, else from the DreamRelation ``prompts.json`` of the folder the image sits in.

Trained weights are cached under a digest of the exemplars (pixels and descriptions), so the same
exemplars never train twice and changed ones always do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError

if TYPE_CHECKING:
    from PIL import Image

    from relbench.benchmark import Relation

TEXT_FILE = "text.json"  # ReVersion's per-image coarse descriptions
DREAMRELATION_PROMPTS = "prompts.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
SLOT = "{}"  # where the relation token goes in a description


@dataclass(frozen=True)
class Exemplar:
    image: "Image.Image"  # RGB
    descriptions: tuple[str, ...]  # each with exactly one "{}"
    source: str  # the file it came from, for messages and records


def check_description(text: Any, where: str) -> str:
    """A coarse description must be a string with exactly one ``{}`` slot for the relation."""
    rest = text.replace(SLOT, "", 1) if isinstance(text, str) else ""
    if not isinstance(text, str) or text.count(SLOT) != 1 or "{" in rest or "}" in rest:
        raise RelbenchError(f"{where}: expected a description with exactly one '{{}}' where the relation goes, e.g. \"cat {{}} box\"; got {text!r}")
    return " ".join(text.split())


def entity_descriptions(entities: Sequence[str], where: str) -> tuple[str, ...]:
    """ReVersion-style descriptions from two entity names: bare nouns as in the authors'
    prompts ("lion {} polar bear"), and with articles ("a lion {} a polar bear")."""
    names = [" ".join(str(e).split()) for e in entities]
    if len(names) != 2 or not all(names):
        raise RelbenchError(f"{where}: expected two entity names for a relation exemplar, got {list(entities)!r}")
    first, second = names
    return (f"{first} {SLOT} {second}", f"{_article(first)} {first} {SLOT} {_article(second)} {second}")


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _load_rgb(path: Path) -> "Image.Image":
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RelbenchError(f"{path}: cannot read exemplar image: {exc}") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RelbenchError(f"{path}: cannot read JSON: {exc}") from exc


def folder_kind(folder: Path) -> str:
    """``"reversion"`` or ``"dreamrelation"``; a RelbenchError naming the folder otherwise."""
    if not folder.is_dir():
        raise RelbenchError(f"{folder}: exemplar folder not found")
    if (folder / TEXT_FILE).is_file():
        return "reversion"
    if (folder / DREAMRELATION_PROMPTS).is_file() and (folder / "videos").is_dir():
        return "dreamrelation"
    raise RelbenchError(
        f"{folder}: not an exemplar folder: expected images with ReVersion's {TEXT_FILE} "
        f"(e.g. {{\"0.jpg\": [\"cat {{}} box\"]}}) or a DreamRelation relation folder ({DREAMRELATION_PROMPTS} + videos/)"
    )


def reversion_image_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_exemplar_folder(folder: Path, load_images: bool = True) -> list[Exemplar]:
    """Every exemplar of a ReVersion or DreamRelation folder, in a fixed (sorted) order.

    ``load_images=False`` checks the layout and descriptions only (images are then ``None``).
    """
    kind = folder_kind(folder)
    out: list[Exemplar] = []
    if kind == "reversion":
        text_path = folder / TEXT_FILE
        table = _read_json(text_path)
        if not isinstance(table, dict):
            raise RelbenchError(f"{text_path}: expected an object mapping image file names to descriptions")
        names = reversion_image_names(folder)
        if not names:
            raise RelbenchError(f"{folder}: no exemplar images ({', '.join(IMAGE_SUFFIXES)})")
        for name in names:
            if name not in table:
                raise RelbenchError(f"{text_path}: no descriptions for image {name!r} (expected \"{name}\": [\"cat {{}} box\", ...])")
            entry = table[name]
            texts = [entry] if isinstance(entry, str) else entry
            if not isinstance(texts, list) or not texts:
                raise RelbenchError(f"{text_path}: {name}: expected a non-empty list of descriptions")
            descriptions = tuple(check_description(t, f"{text_path}: {name}") for t in texts)
            image = _load_rgb(folder / name) if load_images else None
            out.append(Exemplar(image, descriptions, str(folder / name)))  # type: ignore[arg-type]
        return out

    prompts_path = folder / DREAMRELATION_PROMPTS
    table = _read_json(prompts_path)
    if not isinstance(table, dict) or not table:
        raise RelbenchError(f"{prompts_path}: expected an object of examples {{\"0\": {{\"entities\": [...]}}}}")
    for key in sorted(table, key=lambda k: (not str(k).isdigit(), int(k) if str(k).isdigit() else 0, str(k))):
        example = table[key]
        where = f"{prompts_path}: {key}.entities"
        if not isinstance(example, dict) or not isinstance(example.get("entities"), list):
            raise RelbenchError(f"{where}: missing; expected the two entity names")
        image_path = folder / "videos" / str(key) / "motion.png"
        if not image_path.is_file():
            raise RelbenchError(f"{image_path}: relation image not found (listed in {prompts_path})")
        descriptions = entity_descriptions(example["entities"], where)
        image = _load_rgb(image_path) if load_images else None
        out.append(Exemplar(image, descriptions, str(image_path)))  # type: ignore[arg-type]
    return out


def reference_pose_exemplars(relation: "Relation", data_root: Path, spec_dir: Path | None) -> list[Exemplar]:
    """Exemplars from a benchmark relation's reference pose images (empty when it has none)."""
    from relbench.data_root import load_image, resolve_path

    out: list[Exemplar] = []
    for index, pose in enumerate(relation.reference_poses):
        if not pose.image:
            continue
        path = resolve_path(pose.image, data_root, spec_dir)
        descriptions = _descriptions_beside(path, f"relations[{relation.id}].reference_poses[{index}].image")
        out.append(Exemplar(load_image(pose.image, data_root, spec_dir), descriptions, str(path)))
    return out


def _descriptions_beside(path: Path, field: str) -> tuple[str, ...]:
    """A text.json next to the image, else DreamRelation's prompts.json for .../<rel>/videos/<i>/motion.png."""
    text_path = path.parent / TEXT_FILE
    if text_path.is_file():
        table = _read_json(text_path)
        entry = table.get(path.name) if isinstance(table, dict) else None
        if entry is not None:
            texts = [entry] if isinstance(entry, str) else entry
            if not isinstance(texts, list) or not texts:
                raise RelbenchError(f"{text_path}: {path.name}: expected a non-empty list of descriptions")
            return tuple(check_description(t, f"{text_path}: {path.name}") for t in texts)
    if path.parent.parent.name == "videos":
        prompts_path = path.parent.parent.parent / DREAMRELATION_PROMPTS
        if prompts_path.is_file():
            table = _read_json(prompts_path)
            example = table.get(path.parent.name) if isinstance(table, dict) else None
            if isinstance(example, dict) and isinstance(example.get("entities"), list):
                return entity_descriptions(example["entities"], f"{prompts_path}: {path.parent.name}.entities")
    raise RelbenchError(
        f"{path}: {field}: no coarse description for this exemplar (ReVersion trains on one per image): put a "
        f"{TEXT_FILE} beside it mapping {path.name!r} to e.g. [\"cat {{}} box\"], or use DreamRelation's layout"
    )


def exemplars_digest(exemplars: Sequence[Exemplar]) -> str:
    """sha256 over every exemplar's pixels and descriptions, in order."""
    from relbench.trained_cache import images_digest

    digest = hashlib.sha256()
    for exemplar in exemplars:
        digest.update(images_digest([exemplar.image]).encode())
        digest.update(json.dumps(list(exemplar.descriptions)).encode("utf-8"))
    return digest.hexdigest()


def write_exemplar_folder(exemplars: Sequence[Exemplar], folder: Path) -> Path:
    """Write exemplars as a ReVersion folder (``000.png``..., ``text.json``); the training entry reads it."""
    from relbench.runstore import atomic_save_image, atomic_write_json

    if not exemplars:
        raise RelbenchError(f"{folder}: no exemplar to write")
    folder.mkdir(parents=True, exist_ok=True)
    table: dict[str, list[str]] = {}
    for index, exemplar in enumerate(exemplars):
        name = f"{index:03d}.png"
        atomic_save_image(exemplar.image, folder / name)
        table[name] = list(exemplar.descriptions)
    atomic_write_json(folder / TEXT_FILE, table)
    return folder


def tree_digest(folder: Path) -> str:
    """sha256 over the relative paths and bytes of every file under a folder (cheap provenance)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
