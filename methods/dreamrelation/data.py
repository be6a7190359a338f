"""DreamRelation training triplets: reading, validation, instance association, augmentation.

Layout of one relation (the public DreamRelation sample data; N entities, K keypoints, both read
from the files, never assumed)::

    <root>/<relation>/prompts.json        {"<i>": {"prompt": str, "entities": [e0, ..., eN-1],
                                                    "predicate": [word, ...]}}   (predicate optional)
    <root>/<relation>/videos/<i>/concept<j>.png            identity image of entity j (j = 0..N-1)
    <root>/<relation>/videos/<i>/concept_keyposes_<w>.pth  (1, K, 2) keypoints of entity j in its
                                                           concept image; <w> = one, two, three, ...
    <root>/<relation>/videos/<i>/motion.png                the relation image
    <root>/<relation>/videos/<i>/motion_keyposes.pth       (N, K, 2) keypoints of the N instances
    <root>/<relation>/masks/<i>/motion<j>.png              mask of entity j in motion.png

Keypoints are normalised (x, y): x = 0 is the left edge of the image and x = 1 its right edge, so
pixel column ``c`` covers ``[c / W, (c + 1) / W)``. Visibility is optional: a third channel
(x, y, v) or a ``<stem>_visibility.pth`` file beside it (``relbench.keypoints.load_pose``, the one
reader of keypoint files, also used by the specs' reference poses). The coordinates of invisible
keypoints are never used and may lie outside [0, 1] (after a crop they do).

The masks are in entity order (motion0 belongs to entity 0), but the instance order of
``motion_keyposes.pth`` is not trusted (upstream matched by index and the sample data has swapped
examples): ``associate_instances`` finds which instance belongs to which entity from the masks.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from relbench.errors import Problem, RelbenchError, SpecError
from relbench.keypoints import KeypointFileError, Skeleton, get_skeleton, load_pose

# Upstream names concept keypoint files by the English number of the entity (1-based).
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
PROMPT_KEYS = ("prompt", "entities", "predicate")
MASK_THRESHOLD = 127  # masks are 8-bit; above this is inside


class TrainingDataError(SpecError):
    """Training triplets that cannot be used; carries every problem found, not just the first."""


# --------------------------------------------------------------------------------------------
# Predicate words.

# Words that never carry the relation: articles, copulas, the conjunction between entities,
# the preposition after the verb ("shakes hands with") and reciprocal markers ("each other").
PREDICATE_STOP_WORDS = frozenset(
    {"a", "an", "the", "and", "is", "are", "was", "were", "be", "been", "being", "with", "to", "each", "other",
     "together"}
)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")


def prompt_words(prompt: str) -> list[str]:
    """The words of a prompt, punctuation dropped, case kept."""
    return _WORD.findall(prompt)


def derive_predicate(prompt: str, entities: Sequence[str]) -> tuple[str, ...] | None:
    """The relation words of a prompt whose predicate was not given, or None when not found.

    Rule: find the entity phrases in the prompt in order (case-insensitive, whole words); look at
    the gaps between consecutive entities, then at the words after the last one; the first gap
    that keeps any word after dropping ``PREDICATE_STOP_WORDS`` is the predicate.
    "A wolf shakes hands with a leopard." -> ("shakes", "hands");
    "A raccoon and a sloth are shaking hands." -> ("shaking", "hands").
    """
    words = prompt_words(prompt)
    lowered = [w.lower() for w in words]
    spans: list[tuple[int, int]] = []
    start = 0
    for entity in entities:
        phrase = [w.lower() for w in prompt_words(entity)]
        found = _find_sequence(lowered, phrase, start)
        if not phrase or found is None:
            return None
        spans.append((found, found + len(phrase)))
        start = found + len(phrase)
    gaps = [(spans[i][1], spans[i + 1][0]) for i in range(len(spans) - 1)] + [(spans[-1][1], len(words))]
    for begin, end in gaps:
        kept = tuple(w for w in words[begin:end] if w.lower() not in PREDICATE_STOP_WORDS)
        if kept:
            return kept
    return None


def _find_sequence(words: list[str], phrase: list[str], start: int) -> int | None:
    for i in range(start, len(words) - len(phrase) + 1):
        if words[i:i + len(phrase)] == phrase:
            return i
    return None


# --------------------------------------------------------------------------------------------
# Masks.


def load_mask(path: Path) -> np.ndarray:
    """A (H, W) bool mask from an image file (any mode; grey values above 127 are inside)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > MASK_THRESHOLD


# --------------------------------------------------------------------------------------------
# Reading and validation.


@dataclass(frozen=True, eq=False)
class Triplet:
    """One training example: N concept images, the relation image, its masks and keypoints.

    ``keypoints`` keep the file's instance order; ``associate_instances`` maps them to entities.
    """

    relation: str
    index: int
    prompt: str
    entities: tuple[str, ...]
    predicate: tuple[str, ...]
    predicate_derived: bool  # True when prompts.json had no predicate and it came from the prompt
    concept_images: tuple[Path, ...]
    motion_image: Path
    masks: tuple[Path, ...]
    motion_keypoints_file: Path
    concept_keypoints_files: tuple[Path, ...]
    keypoints: torch.Tensor  # (N_inst, K, 2)
    visibility: torch.Tensor  # (N_inst, K) bool
    concept_keypoints: tuple[torch.Tensor, ...]  # N of (1, K, 2)
    concept_visibility: tuple[torch.Tensor, ...]  # N of (1, K) bool

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[1])


def read_relation_dir(root: Path, relation: str) -> list[Triplet]:
    """Every triplet of ``<root>/<relation>``, checked; raises TrainingDataError listing all problems."""
    problems: list[Problem] = []
    triplets = _scan_relation(Path(root), relation, problems)
    if problems:
        raise TrainingDataError(problems)
    return triplets


def validate_relation_dir(root: Path, relation: str) -> list[Problem]:
    """All problems of ``<root>/<relation>`` (empty when it can be trained on)."""
    problems: list[Problem] = []
    _scan_relation(Path(root), relation, problems)
    return problems


def _scan_relation(root: Path, relation: str, problems: list[Problem]) -> list[Triplet]:
    rel_dir = root / relation
    if not rel_dir.is_dir():
        problems.append(Problem(str(rel_dir), "(file)", "relation folder not found; expected prompts.json, videos/ and masks/ in it"))
        return []
    prompts = _read_prompts(rel_dir / "prompts.json", problems)
    videos = rel_dir / "videos"
    folders: set[int] = set()
    if not videos.is_dir():
        problems.append(Problem(str(videos), "(file)", "folder not found; expected one folder per example: videos/0/, videos/1/, ..."))
    else:
        for child in sorted(videos.iterdir()):
            if child.is_dir() and child.name.isdigit():
                folders.add(int(child.name))
            elif child.is_dir():
                problems.append(Problem(str(child), "(file)", "expected a folder named by a non-negative integer index"))
    if prompts is None:
        return []
    triplets = []
    for index in sorted(folders | set(prompts)):
        if index not in prompts:
            problems.append(Problem(str(rel_dir / "prompts.json"), str(index), f"missing entry for videos/{index}/; expected {{\"prompt\", \"entities\"}}"))
            continue
        if index not in folders:
            problems.append(Problem(str(videos / str(index)), "(file)", f"folder not found for prompts.json entry {index}"))
            continue
        triplet = _scan_triplet(rel_dir, relation, index, prompts[index], problems)
        if triplet is not None:
            triplets.append(triplet)
    return triplets


def _read_prompts(path: Path, problems: list[Problem]) -> dict[int, dict[str, Any]] | None:
    """Entries by index with well-typed fields; an entry with a problem is left out."""
    where = str(path)
    if not path.is_file():
        problems.append(Problem(where, "(file)", 'not found; expected a JSON object {"<index>": {"prompt", "entities", "predicate"}}'))
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        problems.append(Problem(where, f"line {exc.lineno}", f"not valid JSON: {exc.msg}"))
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(where, "(file)", f"cannot be read: {exc}"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(where, "(top level)", f"expected a JSON object keyed by example index, got {type(data).__name__}"))
        return None
    entries: dict[int, dict[str, Any]] = {}
    for key, entry in data.items():
        before = len(problems)
        if not key.isdigit():
            problems.append(Problem(where, key, "expected a non-negative integer index as the key"))
            continue
        if not isinstance(entry, dict):
            problems.append(Problem(where, key, f"expected an object with prompt and entities, got {type(entry).__name__}"))
            continue
        for unknown in sorted(set(entry) - set(PROMPT_KEYS)):
            problems.append(Problem(where, f"{key}.{unknown}", f"unknown key; expected {', '.join(PROMPT_KEYS)}"))
        prompt = entry.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(Problem(where, f"{key}.prompt", f"expected a non-empty string, got {prompt!r}"))
        entities = entry.get("entities")
        if not _is_word_list(entities) or len(entities) < 2:
            problems.append(Problem(where, f"{key}.entities", f"expected a list of at least 2 non-empty phrases, got {entities!r}"))
        predicate = entry.get("predicate")
        if predicate is not None and not _is_word_list(predicate):
            problems.append(Problem(where, f"{key}.predicate", f"expected a non-empty list of words, got {predicate!r}"))
        if len(problems) == before:
            entries[int(key)] = entry
    return entries


def _is_word_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)


def _numbered(folder: Path, prefix: str, what: str, problems: list[Problem]) -> list[Path] | None:
    """``<prefix>0.png, <prefix>1.png, ...``: all of them, or None (reported) when there is a gap."""
    pattern = re.compile(rf"{re.escape(prefix)}(\d+)\.png")
    found = {}
    if folder.is_dir():
        for child in folder.iterdir():
            match = pattern.fullmatch(child.name)
            if match:
                found[int(match.group(1))] = child
    for expected in range(len(found)):
        if expected not in found:
            problems.append(Problem(str(folder / f"{prefix}{expected}.png"), "(file)",
                                    f"missing {what}; found {', '.join(p.name for _, p in sorted(found.items()))}"))
            return None
    return [found[i] for i in range(len(found))]


def _image_size(path: Path, problems: list[Problem]) -> tuple[int, int] | None:
    if not path.is_file():
        problems.append(Problem(str(path), "(file)", "image not found"))
        return None
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except (UnidentifiedImageError, OSError) as exc:
        problems.append(Problem(str(path), "(file)", f"not a readable image: {' '.join(str(exc).split())[:200]}"))
        return None


def _pose(path: Path, field_name: str, problems: list[Problem]) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        problems.append(Problem(str(path), "(file)", f"{field_name} file not found"))
        return None
    try:
        return load_pose(path)
    except KeypointFileError as exc:
        problems.append(Problem(str(path), field_name, str(exc).removeprefix(f"{path}: ")))
        return None


def _scan_triplet(rel_dir: Path, relation: str, index: int, entry: dict[str, Any], problems: list[Problem]) -> Triplet | None:
    before = len(problems)
    prompts_file = str(rel_dir / "prompts.json")
    video_dir = rel_dir / "videos" / str(index)
    mask_dir = rel_dir / "masks" / str(index)
    prompt: str = entry["prompt"]
    entities = tuple(entry["entities"])
    n = len(entities)

    concepts = _numbered(video_dir, "concept", "concept image", problems)
    if concepts is None:
        concepts = []
    elif len(concepts) != n:
        problems.append(Problem(str(video_dir), "(file)",
                                f"{len(concepts)} concept images (concept0.png, ...) but prompts.json entry {index} names {n} entities"))
    for concept in concepts:
        _image_size(concept, problems)

    motion = video_dir / "motion.png"
    motion_size = _image_size(motion, problems)

    masks: list[Path] | None = None
    if not mask_dir.is_dir():
        problems.append(Problem(str(mask_dir), "(file)", "mask folder not found; expected motion0.png, motion1.png, ... in it"))
    else:
        masks = _numbered(mask_dir, "motion", "mask", problems)
    for mask_path in masks or []:
        size = _image_size(mask_path, problems)
        if size is None:
            continue
        if motion_size is not None and size != motion_size:
            problems.append(Problem(str(mask_path), "(file)", f"mask is {size[0]}x{size[1]} but motion.png is {motion_size[0]}x{motion_size[1]}"))
        elif not load_mask(mask_path).any():
            problems.append(Problem(str(mask_path), "(file)", "mask is empty; expected the entity's pixels to be white"))

    keypoints_file = video_dir / "motion_keyposes.pth"
    pose = _pose(keypoints_file, "keypoints", problems)
    k = None
    if pose is not None:
        instances, k = int(pose[0].shape[0]), int(pose[0].shape[1])
        if instances != n:
            problems.append(Problem(str(keypoints_file), "keypoints", f"{instances} instances but prompts.json entry {index} names {n} entities"))
        if masks is not None and instances != len(masks):
            problems.append(Problem(str(keypoints_file), "keypoints", f"{instances} instances but {len(masks)} masks in {mask_dir}"))

    concept_files: list[Path] = []
    concept_poses: list[tuple[torch.Tensor, torch.Tensor]] = []
    for j in range(n):
        if j >= len(NUMBER_WORDS):
            problems.append(Problem(prompts_file, f"{index}.entities", f"at most {len(NUMBER_WORDS)} entities are supported, got {n}"))
            break
        path = video_dir / f"concept_keyposes_{NUMBER_WORDS[j]}.pth"
        concept_files.append(path)
        concept_pose = _pose(path, "keypoints", problems)
        if concept_pose is None:
            continue
        shape = tuple(concept_pose[0].shape)
        if shape[0] != 1 or (k is not None and shape[1] != k):
            expected = f"(1, {k}, 2)" if k is not None else "(1, K, 2)"
            problems.append(Problem(str(path), "keypoints", f"expected shape {expected} (one instance, as many keypoints as motion_keyposes.pth), got {shape}"))
        concept_poses.append(concept_pose)

    given = entry.get("predicate")
    if given is not None:
        predicate, derived = tuple(given), False
    else:
        found = derive_predicate(prompt, entities)
        if found is None:
            problems.append(Problem(prompts_file, f"{index}.predicate",
                                    f"missing and cannot be derived from the prompt {prompt!r}; add the relation words, e.g. \"predicate\": [\"hugging\"]"))
            predicate, derived = (), True
        else:
            predicate, derived = found, True
    words = {w.lower() for w in prompt_words(prompt)}
    for word in predicate:
        if word.lower() not in words:
            problems.append(Problem(prompts_file, f"{index}.predicate",
                                    f"{word!r} is not a word of the prompt {prompt!r}; the predicate's tokens are looked up in the prompt"))

    if len(problems) != before or pose is None:
        return None
    return Triplet(
        relation=relation,
        index=index,
        prompt=prompt,
        entities=entities,
        predicate=predicate,
        predicate_derived=derived,
        concept_images=tuple(concepts),
        motion_image=motion,
        masks=tuple(masks or ()),
        motion_keypoints_file=keypoints_file,
        concept_keypoints_files=tuple(concept_files),
        keypoints=pose[0],
        visibility=pose[1],
        concept_keypoints=tuple(p[0] for p in concept_poses),
        concept_visibility=tuple(p[1] for p in concept_poses),
    )


# --------------------------------------------------------------------------------------------
# Instance association (which keypoint instance belongs to which entity).


def _mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Normalised xyxy box of a mask's pixels (pixel edges), None when empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    h, w = mask.shape
    return xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h


def _box_iou(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> float:
    if a is None or b is None:
        return 0.0
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pixel_of(xy: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and row of the pixel that contains each normalised point (clipped to the image)."""
    cols = np.clip(np.floor(xy[..., 0] * width), 0, width - 1).astype(np.int64)
    rows = np.clip(np.floor(xy[..., 1] * height), 0, height - 1).astype(np.int64)
    return cols, rows


def association_scores(keypoints: Any, masks: Sequence[np.ndarray], visibility: Any = None) -> np.ndarray:
    """``scores[entity, instance]``: visible keypoints of the instance inside the entity's mask,
    plus box IoU (keypoint box vs mask box) scaled by 1 / (N + 1).

    The IoU term only breaks ties: N of them add up to less than one keypoint, so the assignment
    maximises keypoints inside the own mask first (overlapping masks, such as the rectangles of
    "hug", often contain keypoints of both instances) and box agreement second.
    """
    points = np.asarray(keypoints, dtype=np.float64)
    if points.ndim != 3 or points.shape[-1] != 2:
        raise RelbenchError(f"associate_instances: expected keypoints of shape (instances, keypoints, 2), got {points.shape}")
    n = points.shape[0]
    if len(masks) != n:
        raise RelbenchError(f"associate_instances: {n} keypoint instances but {len(masks)} masks; expected one mask per instance")
    shown = np.ones(points.shape[:2], dtype=bool) if visibility is None else np.asarray(visibility, dtype=bool)
    scores = np.zeros((n, n))
    for entity, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        height, width = mask.shape
        mask_box = _mask_box(mask)
        for instance in range(n):
            inside = points[instance][shown[instance]]
            if inside.shape[0] == 0:
                continue  # an instance with no visible keypoint has no evidence either way
            cols, rows = pixel_of(inside, width, height)
            count = int(mask[rows, cols].sum())
            point_box = (inside[:, 0].min(), inside[:, 1].min(), inside[:, 0].max(), inside[:, 1].max())
            scores[entity, instance] = count + _box_iou(point_box, mask_box) / (n + 1)
    return scores


def associate_instances(keypoints: Any, masks: Sequence[np.ndarray], visibility: Any = None) -> list[int]:
    """For each entity i (mask i), the index of the keypoint instance that belongs to it.

    Each instance goes to the entity whose mask holds most of its visible keypoints, ties and
    empty evidence decided by box IoU (``association_scores``); the one-to-one assignment that
    maximises the total score is solved globally with the Hungarian method, so two instances can
    never claim the same entity. ``keypoints[perm]`` puts instance i on entity i.
    """
    from scipy.optimize import linear_sum_assignment

    scores = association_scores(keypoints, masks, visibility)
    entities, instances = linear_sum_assignment(scores, maximize=True)
    perm = [0] * len(entities)
    for entity, instance in zip(entities, instances):
        perm[int(entity)] = int(instance)
    return perm


# --------------------------------------------------------------------------------------------
# Augmentation: one random placement applied to an image, its masks and its keypoints.

FITS = ("letterbox", "crop")
# The reference's RandomResizeCrop cuts its crop with this probability.
REFERENCE_CROP_P = 0.5


@dataclass(frozen=True)
class Placement:
    """One draw: the crop box in source pixels, where it lands in the output, whether to mirror.

    The crop is resized into ``content`` (left, top, right, bottom in output pixels) of a black
    canvas of ``out_size``; ``content=None`` is the whole canvas. A content box smaller than the
    canvas is a letterbox: nothing of the crop is cut.
    """

    box: tuple[int, int, int, int]  # left, top, right, bottom (pixel edges) in the source image
    flip: bool
    out_size: tuple[int, int]  # (width, height)
    content: tuple[int, int, int, int] | None = None

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        return self.content if self.content is not None else (0, 0, *self.out_size)

    def _place(self, image: Image.Image, resample: Image.Resampling) -> Image.Image:
        left, top, right, bottom = self.content_box
        out = image.crop(self.box).resize((right - left, bottom - top), resample)
        if (left, top, right, bottom) != (0, 0, *self.out_size):
            canvas = Image.new(out.mode, self.out_size)  # black (masks: 0) around the content
            canvas.paste(out, (left, top))
            out = canvas
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.flip else out

    def image(self, image: Image.Image) -> Image.Image:
        # Bilinear, as the reference's torchvision resizes.
        return self._place(image.convert("RGB"), Image.Resampling.BILINEAR)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        # Nearest neighbour keeps the mask binary.
        out = self._place(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255), Image.Resampling.NEAREST)
        return np.asarray(out) > MASK_THRESHOLD

    def keypoints(self, xy: torch.Tensor, visibility: torch.Tensor, source_size: tuple[int, int],
                  flip_permutation: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(…, K, 2) keypoints in the output image; those outside the crop become invisible."""
        width, height = source_size
        left, top, right, bottom = self.box
        c_left, c_top, c_right, c_bottom = self.content_box
        out_w, out_h = self.out_size
        # Position inside the crop (0..1), then inside the content box of the canvas.
        u = (xy[..., 0] * width - left) / (right - left)
        v = (xy[..., 1] * height - top) / (bottom - top)
        inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
        out = xy.new_empty(xy.shape)
        out[..., 0] = (c_left + u * (c_right - c_left)) / out_w
        out[..., 1] = (c_top + v * (c_bottom - c_top)) / out_h
        visible = visibility & inside
        if self.flip:
            if flip_permutation is None:
                raise RelbenchError("augmentation: a horizontal flip needs a skeleton to swap left and right keypoints")
            out[..., 0] = 1 - out[..., 0]
            # "left paw" must stay the left paw of the mirrored animal.
            out, visible = out[..., list(flip_permutation), :], visible[..., list(flip_permutation)]
        return out, visible

    def crop_top_left(self, source_size: tuple[int, int]) -> tuple[int, int]:
        """SDXL's ``crops_coords_top_left`` (top, left): what the crop cut off above and to the left,
        in pixels of the source resized to cover the output (shortest side to the resolution for a
        square output), as SDXL's training scripts measure it; a mirrored image's left is the
        source's right. (0, 0) when nothing is cut there (letterbox padding is not a crop)."""
        width, height = source_size
        out_w, out_h = self.out_size
        scale = max(out_w / width, out_h / height)
        left = width - self.box[2] if self.flip else self.box[0]
        return round(self.box[1] * scale), round(left * scale)


@dataclass(frozen=True)
class TripletTransform:
    """Fit an image to the training resolution, with a random crop and an optional horizontal flip.

    ``fit="letterbox"`` (the default; the reference's RandomResizeCrop): with probability
    ``crop_p`` first cut the reference's crop: from an image wider than the output, a full-height
    box with the output's aspect at a uniformly random column; from a taller one, the full width
    from the top down to a uniformly random height between the output's aspect and the whole
    image; an image with the output's aspect is not cut. Then the (cropped) image is resized so
    that it fits the output with its aspect kept, and put on a black canvas at a uniformly random
    offset (``random_offset``; centred otherwise). Without a crop nothing of the image is lost.

    ``fit="crop"``: a box with the output's aspect, of side ``s`` times the largest such box
    (``s`` uniform in ``crop_scale``; (1, 1) is a plain cover-resize), at a uniform random
    position, resized to fill the output.

    Either way the image is mirrored with probability ``hflip_p`` (off by default: the reference
    never flips). The same draw moves the image, its masks and its keypoints; keypoints that leave
    the crop become invisible. Mirroring swaps left/right keypoints by ``skeleton``'s flip pairs.
    """

    resolution: int | tuple[int, int]  # (height, width); an int is a square
    fit: str = "letterbox"
    crop_p: float = REFERENCE_CROP_P  # letterbox only
    random_offset: bool = True  # letterbox only
    crop_scale: tuple[float, float] = (1.0, 1.0)  # crop only
    hflip_p: float = 0.0
    skeleton: str | Skeleton | None = None  # required when hflip_p > 0
    _skeleton: Skeleton | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        height, width = self.size_hw
        if height < 1 or width < 1:
            raise RelbenchError(f"augmentation: resolution must be positive, got {self.resolution}")
        if self.fit not in FITS:
            raise RelbenchError(f"augmentation: fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise RelbenchError(f"augmentation: crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.fit != "crop" and tuple(self.crop_scale) != (1.0, 1.0):
            raise RelbenchError("augmentation: crop_scale applies to fit='crop'; the letterbox fit crops with crop_p")
        if not 0 <= self.crop_p <= 1:
            raise RelbenchError(f"augmentation: crop_p must be in [0, 1], got {self.crop_p}")
        if not 0 <= self.hflip_p <= 1:
            raise RelbenchError(f"augmentation: hflip_p must be in [0, 1], got {self.hflip_p}")
        skeleton = get_skeleton(self.skeleton) if self.skeleton is not None else None
        if self.hflip_p > 0 and skeleton is None:
            raise RelbenchError("augmentation: hflip_p > 0 needs a skeleton (e.g. 'ap10k') to swap left and right keypoints")
        object.__setattr__(self, "_skeleton", skeleton)

    @property
    def size_hw(self) -> tuple[int, int]:
        return (self.resolution, self.resolution) if isinstance(self.resolution, int) else tuple(self.resolution)  # type: ignore[return-value]

    def sample(self, size: tuple[int, int], generator: torch.Generator | int | None = None) -> Placement:
        """A random placement for an image of ``size`` (width, height)."""
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        # Always five draws, so that the stream does not depend on the settings.
        u_crop, u_pos, u_x, u_y, u_flip = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
        flip = u_flip < self.hflip_p
        width, height = size
        out_h, out_w = self.size_hw
        if self.fit == "crop":
            if width * out_h >= height * out_w:  # the image is wider than the output
                full_w, full_h = height * out_w / out_h, float(height)
            else:
                full_w, full_h = float(width), width * out_h / out_w
            low, high = self.crop_scale
            scale = low + (high - low) * u_pos
            crop_w = min(width, max(1, round(full_w * scale)))
            crop_h = min(height, max(1, round(full_h * scale)))
            left = min(width - crop_w, math.floor(u_x * (width - crop_w + 1)))
            top = min(height - crop_h, math.floor(u_y * (height - crop_h + 1)))
            return Placement((left, top, left + crop_w, top + crop_h), flip, (out_w, out_h))
        box = (0, 0, width, height)
        if u_crop < self.crop_p:
            if width * out_h > height * out_w:  # wider than the output: a full-height box at a random column
                crop_w = min(width, max(1, round(height * out_w / out_h)))
                left = min(width - crop_w, math.floor(u_pos * (width - crop_w + 1)))
                box = (left, 0, left + crop_w, height)
            elif width * out_h < height * out_w:  # taller: keep the top, down to a random height
                least = min(height, max(1, round(width * out_h / out_w)))
                box = (0, 0, width, min(height, least + math.floor(u_pos * (height - least + 1))))
        crop_w, crop_h = box[2] - box[0], box[3] - box[1]
        fit = min(out_w / crop_w, out_h / crop_h)
        content_w, content_h = min(out_w, max(1, round(crop_w * fit))), min(out_h, max(1, round(crop_h * fit)))
        if self.random_offset:
            x = min(out_w - content_w, math.floor(u_x * (out_w - content_w + 1)))
            y = min(out_h - content_h, math.floor(u_y * (out_h - content_h + 1)))
        else:
            x, y = (out_w - content_w) // 2, (out_h - content_h) // 2
        return Placement(box, flip, (out_w, out_h), (x, y, x + content_w, y + content_h))

    def flip_permutation(self, num_keypoints: int) -> list[int] | None:
        """The skeleton's left/right swap, checked against the keypoint count (None without a skeleton)."""
        if self._skeleton is None:
            return None
        if num_keypoints != len(self._skeleton.keypoints):
            raise RelbenchError(f"augmentation: keypoints have {num_keypoints} points per instance but skeleton "
                                f"{self._skeleton.name!r} has {len(self._skeleton.keypoints)}; pass the matching skeleton")
        return self._skeleton.flip_permutation()

    def __call__(self, image: Image.Image, masks: Sequence[np.ndarray], keypoints: torch.Tensor,
                 visibility: torch.Tensor, generator: torch.Generator | int | None = None
                 ) -> tuple[Image.Image, list[np.ndarray], torch.Tensor, torch.Tensor]:
        """The transformed image, masks, keypoints (…, K, 2) and visibility (…, K), one draw for all."""
        permutation = self.flip_permutation(int(keypoints.shape[-2]))
        placement = self.sample(image.size, generator)
        xy, shown = placement.keypoints(keypoints, visibility, image.size, permutation)
        return placement.image(image), [placement.mask(m) for m in masks], xy, shown

# --------------------------------------------------------------------------------------------
# Dataset.


def to_pixel_values(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1], the VAE's input range."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


class TripletDataset(torch.utils.data.Dataset):
    """Training items of one relation, as tensors (see ``__getitem__``).

    Randomness: with an int ``seed`` each item draws from its own generator seeded by
    (seed, epoch, index), so an item is the same in every run and worker; call ``set_epoch`` to
    get new draws. With ``seed=None`` draws come from torch's global generator.
    """

    def __init__(self, root: Path, relation: str, resolution: int | tuple[int, int] = 1024,
                 transform: TripletTransform | None = None, concept_transform: TripletTransform | None = None,
                 seed: int | None = 0) -> None:
        self.transform = transform if transform is not None else TripletTransform(resolution)
        self.concept_transform = concept_transform if concept_transform is not None else self.transform
        expected = TripletTransform(resolution).size_hw
        for name, t in (("transform", self.transform), ("concept_transform", self.concept_transform)):
            if t.size_hw != expected:
                raise RelbenchError(f"TripletDataset: {name} resolution {t.size_hw} differs from resolution {expected}")
        self.relation = relation
        self.seed = seed
        self.epoch = 0
        self.triplets = read_relation_dir(Path(root), relation)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.triplets)

    def _generator(self, item: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, item)) & 0x7FFF_FFFF_FFFF_FFFF)

    def __getitem__(self, item: int) -> dict[str, Any]:
        """Keys: index, relation, prompt, entities, predicate (lists of str); association (N,)
        long (instance of motion_keyposes.pth for each entity); motion_pixel_values (3, H, W) and
        concept_pixel_values (N, 3, H, W) in [-1, 1]; motion_masks (N, 1, H, W) float 0/1 in
        entity order; motion_keypoints (N, K, 2) with instance i on entity i, motion_visibility
        (N, K) bool; concept_keypoints (N, K, 2), concept_visibility (N, K) bool."""
        triplet = self.triplets[item]
        generator = self._generator(item)
        masks = [load_mask(p) for p in triplet.masks]
        perm = associate_instances(triplet.keypoints, masks, triplet.visibility)
        with Image.open(triplet.motion_image) as motion:
            motion_image, motion_masks, motion_xy, motion_shown = self.transform(
                motion, masks, triplet.keypoints[perm], triplet.visibility[perm], generator)
        concept_pixels, concept_xy, concept_shown = [], [], []
        for path, xy, shown in zip(triplet.concept_images, triplet.concept_keypoints, triplet.concept_visibility):
            with Image.open(path) as concept:
                image, _, xy_out, shown_out = self.concept_transform(concept, [], xy, shown, generator)
            concept_pixels.append(to_pixel_values(image))
            concept_xy.append(xy_out[0])
            concept_shown.append(shown_out[0])
        return {
            "index": triplet.index,
            "relation": triplet.relation,
            "prompt": triplet.prompt,
            "entities": list(triplet.entities),
            "predicate": list(triplet.predicate),
            "association": torch.tensor(perm, dtype=torch.long),
            "motion_pixel_values": to_pixel_values(motion_image),
            "concept_pixel_values": torch.stack(concept_pixels),
            "motion_masks": torch.stack([torch.from_numpy(m).float()[None] for m in motion_masks]),
            "motion_keypoints": motion_xy,
            "motion_visibility": motion_shown,
            "concept_keypoints": torch.stack(concept_xy),
            "concept_visibility": torch.stack(concept_shown),
        }


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dimension; other values become lists."""
    if not items:
        raise RelbenchError("collate: empty batch")
    shapes = {tuple(item["motion_keypoints"].shape) for item in items}
    if len(shapes) > 1:
        raise RelbenchError(f"collate: items have different (entities, keypoints) {sorted(shapes)}; use batch size 1 for mixed examples")
    batch: dict[str, Any] = {}
    for key, value in items[0].items():
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(value, torch.Tensor) else values
    return batch
