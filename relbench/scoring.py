"""Scoring images with registered metrics: ``relbench.score`` and ``relbench.Scorer``.

``Scorer`` owns building a profile's metrics (once, on first use) and turning their results into
what a row stores per image, ``{metric: {value, details, settings, higher_is_better}}``
(``score_samples``). ``relbench evaluate`` scores its cases through it (``relbench.runner.Scorer``
builds the samples from the benchmark and calls ``Scorer.from_context``); a notebook calls it on
images in memory or on disk with the inputs the metrics read (prompts, subjects with their
reference images, the relation, layout boxes), so the same images with the same inputs get the
numbers a run stores.

Importing this module imports no torch; building the metrics does.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from relbench.benchmark import Benchmark, Box, Relation, Subject
from relbench.errors import RelbenchError

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from relbench.metrics.base import Metric, ScoringSample
    from relbench.profiles import RunContext

# An image: a PIL image, or a file path (decoded whole, as RGB; ``skimage:NAME`` for scikit-image's photos).
ImageLike = Union["Image.Image", str, os.PathLike]
# A subject's reference images: one image or several.
References = Union[ImageLike, Sequence[ImageLike]]
# The subjects of one image: ``{noun: references}``, or a list of benchmark subject ids (with
# ``benchmark=``) and ``relbench.Subject`` objects.
SubjectsLike = Union[Mapping[str, References], Sequence[Union[str, Subject]]]

DEFAULT_METRICS: tuple[str, ...] = ("clip_t",)

# Columns of ``Scorer.__call__``'s table before the metric columns, and its last one.
SCORE_COLUMNS: tuple[str, ...] = ("id", "image", "prompt", "relation", "subjects")
DETAILS_COLUMN = "metric_details"
ATTRS_KEY = "relbench_scores"


class Scorer:
    """Metrics of one profile, loaded once and reused: ``scorer(images, prompts=...)`` as often as
    you like (a loop over folders loads each model once).

    ``metrics``: registered metric names (``relbench metrics list``), or ``"all"``; ``profile``:
    ``"full"`` (pretrained weights) or ``"tiny"`` (random tiny models, for tests); ``device``:
    ``"auto"``, ``"cpu"``, ``"cuda:1"``, ...; ``models``: ``{KEY: HUB_ID_OR_PATH[@REVISION]}`` as
    ``--model`` (e.g. ``{"clip": "/models/clip-vit-large-patch14"}``); ``embedder_dtype``: as
    ``--embedder-dtype`` (None: ``$RELBENCH_EMBEDDER_DTYPE``, else float32). Names, profile, device and
    model keys are checked here, before any model loads (offline, the HF cache must hold the
    full profile's files: one error lists the missing ones).
    """

    def __init__(
        self,
        metrics: str | Sequence[str] = DEFAULT_METRICS,
        *,
        profile: str = "full",
        device: str = "auto",
        models: Mapping[str, str] | None = None,
        embedder_dtype: str | None = None,
    ) -> None:
        from relbench.models_manifest import check_model_cache
        from relbench.profiles import RunContext
        from relbench.runner import select_metrics

        names = [metrics] if isinstance(metrics, str) else list(metrics)
        if not names or names == ["none"]:
            raise RelbenchError("metrics: empty; name at least one metric (relbench metrics list), or 'all'")
        context = RunContext(profile=profile, device=device, model_overrides=dict(models or {}), embedder_dtype=embedder_dtype)
        metric_names = select_metrics(names, profile)
        check_model_cache(context, [], metric_names)
        self._setup(context, metric_names)

    @classmethod
    def from_context(cls, context: RunContext, metric_names: Sequence[str]) -> Scorer:
        """A scorer for a run whose context and metric names are already checked (the runner's)."""
        scorer = cls.__new__(cls)
        scorer._setup(context, list(metric_names))
        return scorer

    def _setup(self, context: RunContext, metric_names: list[str]) -> None:
        self.context = context
        self.metric_names = metric_names
        self._metrics: list[Metric] | None = None

    @property
    def metrics(self) -> list[Metric]:
        """The metric objects, built on first use (this loads their models)."""
        if self._metrics is None:
            from relbench.metrics import METRICS

            self._metrics = [METRICS.get(name)(self.context) for name in self.metric_names]
        return self._metrics

    def score_samples(self, samples: Sequence[ScoringSample], only: Collection[str] | None = None) -> list[dict[str, dict[str, Any]]]:
        """Per sample, ``{metric: {value, details, settings, higher_is_better}}`` (what a row
        stores) for every metric, or those in ``only``."""
        out: list[dict[str, dict[str, Any]]] = [{} for _ in samples]
        for metric in self.metrics:
            if only is not None and metric.name not in only:
                continue
            settings = metric.settings()
            for entry, result in zip(out, metric.score(samples)):
                entry[metric.name] = {
                    "value": result.value, "details": result.details, "settings": settings,
                    "higher_is_better": metric.higher_is_better,
                }
        return out

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike],
        *,
        prompts: str | Sequence[str] | None = None,
        subjects: SubjectsLike | Sequence[SubjectsLike] | None = None,
        relation: str | Relation | Sequence[str | Relation] | None = None,
        boxes: Sequence[Box] | Sequence[Sequence[Box]] | None = None,
        benchmark: str | Benchmark | None = None,
        ids: Sequence[str] | None = None,
        data_root: str | os.PathLike | None = None,
    ) -> pd.DataFrame:
        """Score ``images``; one row per image (see ``score`` for the arguments and the table)."""
        samples = scoring_samples(images, prompts=prompts, subjects=subjects, relation=relation, boxes=boxes,
                                  benchmark=benchmark, ids=ids, data_root=data_root)
        return results_table(samples, self.score_samples(samples), self.metric_names, _image_names(images))


def score(
    images: ImageLike | Sequence[ImageLike],
    *,
    prompts: str | Sequence[str] | None = None,
    subjects: SubjectsLike | Sequence[SubjectsLike] | None = None,
    relation: str | Relation | Sequence[str | Relation] | None = None,
    boxes: Sequence[Box] | Sequence[Sequence[Box]] | None = None,
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    profile: str = "full",
    device: str = "auto",
    models: Mapping[str, str] | None = None,
    benchmark: str | Benchmark | None = None,
    ids: Sequence[str] | None = None,
    data_root: str | os.PathLike | None = None,
    embedder_dtype: str | None = None,
) -> pd.DataFrame:
    """Score images with registered metrics in one call (models loaded for this call; use
    ``Scorer`` to keep them for the next).

    Each input is given once for every image, or as a list with one entry per image:

    * ``images``: PIL images or file paths.
    * ``prompts``: the prompt each image was made from (``clip_t``).
    * ``subjects``: the subjects the image should show (``clip_i``, ``dino``, identity metrics,
      the relation judge): ``{"dog": "refs/dog.jpg", "cat": ["c1.jpg", "c2.jpg"]}`` (class noun ->
      reference images), or with ``benchmark`` a list of its subject ids; ``relbench.Subject``
      objects work too.
    * ``relation``: the relation phrase ("hugging"; ``clip_r``, the relation judge), or with
      ``benchmark`` a relation id of it (``pose`` and ``relation_mc`` need the benchmark).
    * ``boxes``: one normalised ``(x0, y0, x1, y1)`` layout box per subject (identity metrics
      report how well each subject sits in its box).
    * ``ids``: a name per image for the table and error messages (default: its path, or
      ``image N``); ``relation_mc`` orders its choices by it (the case id in a run).
    * ``benchmark``: a built-in name (``"demo"``, ``"relationbench@1"``), a spec path or a loaded
      ``Benchmark``, whose subject ids and relation ids the inputs may then use; its image
      references resolve against ``data_root`` (default as ``--data-root``).

    ``metrics``, ``profile``, ``device``, ``models`` and ``embedder_dtype`` are those of ``Scorer``. A metric scores
    what it is given: ``clip_t`` without ``prompts`` compares the image with the empty text.

    Returns one row per image: ``id``, ``image`` (the path given, else empty), ``prompt``,
    ``relation``, ``subjects``, one float column per metric (NaN: no value, see its details) and
    ``metric_details`` (``{metric: details}``); ``attrs["relbench_scores"]`` holds each metric's
    direction and settings. With the images, inputs and profile of a run, the values are those
    ``relbench evaluate`` stores (float32 embeddings made in batches of another composition may
    differ in the last bits, ~1e-7 relative).
    """
    scorer = Scorer(metrics, profile=profile, device=device, models=models, embedder_dtype=embedder_dtype)
    return scorer(images, prompts=prompts, subjects=subjects, relation=relation, boxes=boxes,
                  benchmark=benchmark, ids=ids, data_root=data_root)


# --------------------------------------------------------------------------------------------
# Inputs -> ScoringSample


def _is_image(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, (Image.Image, str, os.PathLike))


def _image_list(images: Any) -> list[Any]:
    if _is_image(images):
        return [images]
    if not isinstance(images, Sequence) or not images:
        raise RelbenchError(f"images: expected a PIL image, a file path or a non-empty list of them, got {type(images).__name__}")
    return list(images)


def _image_names(images: Any) -> list[str | None]:
    return [None if not isinstance(item, (str, os.PathLike)) else os.fspath(item) for item in _image_list(images)]


def read_image(value: Any, where: str) -> Image.Image:
    """A PIL image or an image file as RGB (a file is decoded whole: ``relbench.data_root.open_image``)."""
    from PIL import Image

    from relbench.data_root import is_bundled, load_image, open_image, resolve_data_root

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if is_bundled(text):
            return load_image(text, resolve_data_root())
        path = Path(text).expanduser()
        if not path.is_file():
            raise RelbenchError(f"{where}: {path}: image not found")
        return open_image(path).convert("RGB")
    raise RelbenchError(f"{where}: expected a PIL image or a file path, got {type(value).__name__}")


def _per_image(value: Any, n: int, name: str, single: tuple[type, ...]) -> list[Any]:
    """``value`` for each of ``n`` images: one value of the ``single`` types for all, or a list of ``n``."""
    if value is None or isinstance(value, single):
        return [value] * n
    if isinstance(value, Sequence) and len(value) == n and all(v is None or isinstance(v, single) for v in value):
        return list(value)
    kinds = " or ".join(t.__name__ for t in single)
    raise RelbenchError(f"{name}: expected one {kinds} for every image or a list of {n} (one per image), got {value!r:.200}")


def _is_subject_list(value: Any) -> bool:
    """One image's subjects: a mapping, or a list of ids and Subject objects."""
    if isinstance(value, Mapping):
        return True
    return isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(v, (str, Subject)) for v in value)


def _is_box(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)


class _Subjects:
    """Resolves subject inputs to (ids, nouns, categories, references); each file read once."""

    def __init__(self, benchmark: Benchmark | None, data_root: Path):
        from relbench.runner import SubjectInputs

        self.benchmark = benchmark
        self.data_root = data_root
        self.inputs = SubjectInputs(benchmark, data_root) if benchmark is not None else None
        self._read: dict[Any, tuple[Image.Image, ...]] = {}

    def references(self, refs: Any, where: str) -> tuple[Image.Image, ...]:
        items = [refs] if _is_image(refs) else list(refs) if isinstance(refs, Sequence) else None
        if not items:
            raise RelbenchError(f"{where}: expected one or more reference images (PIL images or file paths), got {refs!r:.200}")
        out = []
        for i, item in enumerate(items):
            key = os.fspath(item) if isinstance(item, (str, os.PathLike)) else id(item)
            if key not in self._read:
                self._read[key] = (read_image(item, f"{where}[{i}]"),)
            out.append(self._read[key][0])
        return tuple(out)

    def resolve(self, value: Any, where: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[tuple[Image.Image, ...], ...]]:
        if value is None:
            return (), (), (), ()
        ids: list[str] = []
        nouns: list[str] = []
        categories: list[str] = []
        refs: list[tuple[Image.Image, ...]] = []
        if isinstance(value, Mapping):
            for noun, references in value.items():
                if not isinstance(noun, str) or not noun.strip():
                    raise RelbenchError(f"{where}: expected class nouns as keys ({{'dog': 'dog.jpg'}}), got {noun!r}")
                ids.append(noun if noun not in ids else f"{noun}_{len(ids)}")
                nouns.append(noun)
                refs.append(self.references(references, f"{where}[{noun!r}]"))
            return tuple(ids), tuple(nouns), (), tuple(refs)
        for i, item in enumerate(value):
            if isinstance(item, str):
                if self.benchmark is None or self.inputs is None:
                    raise RelbenchError(f"{where}[{i}]: {item!r}: a subject id needs benchmark=...; "
                                        "otherwise give {class noun: reference images}")
                if item not in self.benchmark.subjects:
                    from relbench.registry import unknown_name_message

                    raise RelbenchError(f"{where}[{i}]: {unknown_name_message('subject', item, list(self.benchmark.subjects))} "
                                        f"(in {self.benchmark.label})")
                subject = self.benchmark.subjects[item]
                images = self.inputs.images(item)[0]
            else:
                from relbench.data_root import load_image

                subject = item
                spec_dir = self.benchmark.spec_dir if self.benchmark is not None else None
                images = tuple(load_image(ref, self.data_root, spec_dir) for ref in subject.images)
            ids.append(subject.id)
            nouns.append(subject.class_noun)
            categories.append(subject.category)
            refs.append(images)
        return tuple(ids), tuple(nouns), tuple(categories), tuple(refs)


def _relation(value: str | Relation | None, benchmark: Benchmark | None, where: str) -> tuple[str, str | None, str | None]:
    """(phrase, relation id, kind) of a relation input."""
    if value is None:
        return "", None, None
    if isinstance(value, Relation):
        return value.phrase, value.id, value.kind.value
    if benchmark is None:
        return value, None, None
    if value not in benchmark.relations:
        from relbench.registry import unknown_name_message

        raise RelbenchError(f"{where}: {unknown_name_message('relation', value, list(benchmark.relations))} "
                            f"(in {benchmark.label}; with benchmark=..., give a relation id)")
    relation = benchmark.relations[value]
    return relation.phrase, relation.id, relation.kind.value


def _boxes(value: Any, n: int) -> list[tuple[Box, ...]]:
    from relbench.spec import box_problem

    if value is None:
        return [()] * n
    common = isinstance(value, Sequence) and all(_is_box(v) for v in value)
    if not common and not (isinstance(value, Sequence) and len(value) == n):
        raise RelbenchError(f"boxes: expected one (x0, y0, x1, y1) per subject, or a list of {n} such lists (one per image)")
    per_image = [value] * n if common else list(value)
    out: list[tuple[Box, ...]] = []
    for i, boxes in enumerate(per_image):
        for j, box in enumerate(boxes or ()):
            problem = box_problem(box)
            if problem:
                raise RelbenchError(f"boxes[{j}]: {problem}" if common else f"boxes[{i}][{j}]: {problem}")
        out.append(tuple((float(box[0]), float(box[1]), float(box[2]), float(box[3])) for box in boxes or ()))
    return out


def scoring_samples(
    images: ImageLike | Sequence[ImageLike],
    *,
    prompts: str | Sequence[str] | None = None,
    subjects: SubjectsLike | Sequence[SubjectsLike] | None = None,
    relation: str | Relation | Sequence[str | Relation] | None = None,
    boxes: Sequence[Box] | Sequence[Sequence[Box]] | None = None,
    benchmark: str | Benchmark | None = None,
    ids: Sequence[str] | None = None,
    data_root: str | os.PathLike | None = None,
) -> list[ScoringSample]:
    """The ``ScoringSample`` of each image from ``score``'s arguments (checked, one-line errors)."""
    from relbench.benchmarks import load_benchmark
    from relbench.data_root import resolve_data_root
    from relbench.metrics.base import ScoringSample

    items = _image_list(images)
    n = len(items)
    bench = load_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    root = resolve_data_root(data_root)
    prompt_list = _per_image(prompts, n, "prompts", (str,))
    relation_list = _per_image(relation, n, "relation", (str, Relation))
    per_image_subjects = not (subjects is None or _is_subject_list(subjects))
    if not per_image_subjects:
        subject_list = [subjects] * n
    elif isinstance(subjects, Sequence) and len(subjects) == n and all(s is None or _is_subject_list(s) for s in subjects):
        subject_list = list(subjects)
    else:
        raise RelbenchError(f"subjects: expected {{class noun: reference images}} or a list of subject ids for every image, "
                            f"or a list of {n} of them (one per image), got {subjects!r:.200}")
    box_list = _boxes(boxes, n)
    names = _image_names(images)
    id_list = [name or f"image {i}" for i, name in enumerate(names)] if ids is None else _per_image(list(ids), n, "ids", (str,))
    resolver = _Subjects(bench, root)
    samples: list[ScoringSample] = []
    for i, item in enumerate(items):
        where = f"subjects[{i}]" if per_image_subjects else "subjects"
        subject_ids, nouns, categories, references = resolver.resolve(subject_list[i], where)
        if box_list[i] and len(box_list[i]) != len(subject_ids):
            raise RelbenchError(f"boxes: image {i} has {len(box_list[i])} boxes for {len(subject_ids)} subjects; expected one per subject")
        phrase, relation_id, kind = _relation(relation_list[i], bench, "relation")
        samples.append(ScoringSample(
            case_id=id_list[i], image=read_image(item, f"images[{i}]"), prompt=prompt_list[i] or "",
            relation_phrase=phrase, subject_ids=subject_ids, subject_nouns=nouns, references=references,
            relation_id=relation_id, relation_kind=kind, boxes=box_list[i], subject_categories=categories,
            benchmark=bench, data_root=root,
        ))
    return samples


def results_table(
    samples: Sequence[ScoringSample], results: Sequence[dict[str, dict[str, Any]]], metric_names: Sequence[str],
    image_names: Sequence[str | None],
) -> pd.DataFrame:
    """``Scorer.__call__``'s table: one row per sample, ``SCORE_COLUMNS``, a float column per metric, details."""
    import math

    import pandas as pd

    rows = []
    for sample, result, name in zip(samples, results, image_names):
        row: dict[str, Any] = {
            "id": sample.case_id, "image": name, "prompt": sample.prompt, "relation": sample.relation_phrase,
            "subjects": sample.subject_ids,
        }
        for metric in metric_names:
            value = result.get(metric, {}).get("value")
            row[metric] = math.nan if value is None else float(value)
        row[DETAILS_COLUMN] = {metric: entry.get("details", {}) for metric, entry in result.items()}
        rows.append(row)
    table = pd.DataFrame(rows, columns=[*SCORE_COLUMNS, *metric_names, DETAILS_COLUMN])
    for metric in metric_names:
        table[metric] = table[metric].astype("float64")
    first = results[0] if results else {}
    table.attrs[ATTRS_KEY] = {
        metric: {"higher_is_better": entry.get("higher_is_better"), "settings": entry.get("settings")}
        for metric, entry in first.items()
    }
    return table
