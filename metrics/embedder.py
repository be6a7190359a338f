"""What the CLIP and DINO metrics share: the image-embedder constructor and the reference-similarity metric.

``ImageEmbedder`` builds an embedder the same way for both: a model passed in built, the tiny
profile's seeded random model, or a pretrained one by ``context.model(key)`` (checked loading from
``relbench.metrics.loading``); then the processor's preprocessing checked against the model's
input size, the weights' identity taken (``relbench.metrics.embedding_cache``), the model moved
to the context's device and dtype, batched embedding and the reference-embedding cache.
Subclasses say how to build their model and how a batch of pixels becomes features.

``ReferenceSimilarityMetric`` is the base of CLIP-I and DINO: generated image vs each subject's
reference images.

One forward per image per embedder: ``embed_images`` keeps the embeddings it computed (the last
``IMAGE_MEMO_SIZE`` images, keyed by pixel digest and the embedder's settings: model, preprocessing,
pooling, precision), so clip_t, clip_i and clip_r, which the runner scores on the same batch in
turn, embed each generated image once (they share one embedder and one preprocessing), and so do
the DINO views of one pooling. References go through ``ReferenceEmbeddings`` (memory and disk).

Precision (``dtype``, see ``PRECISIONS``): float32 (default), tf32 (float32 weights, TensorFloat-32
matmuls on GPUs that have it), bfloat16, float16. It moves the numbers, so it is part of the
settings every row records and of the reference-cache key. A metric built without an explicit
``dtype`` takes ``$RELBENCH_EMBEDDER_DTYPE`` (``default_precision``), else float32.
"""

from __future__ import annotations

import json
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from relbench.errors import RelbenchError
from relbench.metrics.base import Metric, MetricResult, ScoringSample
from relbench.metrics.embedding_cache import ReferenceEmbeddings, image_digest, weights_identity
from relbench.metrics.functional.preprocess import ImagePreprocess, preprocess_from_processor
from relbench.metrics.functional.similarity import VALUE_RANGE
from relbench.metrics.loading import batched, built_model_name, model_source, resolve_revision
from relbench.profiles import (
    PRECISIONS, ModelRef, RunContext, check_precision, default_precision, resolved_revision, torch_dtype,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_BATCH_SIZE = 16
# Embeddings of (generated) images kept per embedder, a few kB each: far more than the images of
# one scoring batch, which every metric of the run scores in turn.
IMAGE_MEMO_SIZE = 4096



def weights_dtype(precision: str) -> "torch.dtype":
    """The torch dtype of the weights for ``precision`` (a clear error for an unknown name)."""
    return torch_dtype(PRECISIONS[check_precision(precision)])


@contextmanager
def compute_precision(precision: str) -> Iterator[None]:
    """Inside: float32 matmuls as ``precision`` asks (TF32 for "tf32"); restored afterwards."""
    import torch

    if precision != "tf32":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def check_input_size(preprocess: ImagePreprocess, expected: int, where: str) -> None:
    size = preprocess.output_size
    if size is None or size != (expected, expected):
        raise RelbenchError(
            f"{where}: the image processor gives {size or 'variable-size'} images but the model expects "
            f"{expected}x{expected}; check preprocessor_config.json (size / crop_size)"
        )


def normalized(parts: list["torch.Tensor"], dim: int) -> "torch.Tensor":
    """The batches' outputs concatenated and L2-normalised; (0, dim) when there were none."""
    import torch

    if not parts:
        return torch.empty(0, dim)
    return torch.nn.functional.normalize(torch.cat(parts), dim=-1)


class ImageEmbedder(ABC):
    """A model loaded once that embeds images (L2-normalised, float32, on the CPU).

    Subclasses set ``model_key`` (the ``context.model`` key, also the start of error messages) and
    give the three ways to get ``(model, image_processor)`` (built, tiny, pretrained; those of CLIP
    also keep the tokenizer), the model's input resolution and embedding size, ``_forward`` (a batch
    of pixels -> features) and ``_image_settings`` (what the reference cache is keyed by).
    """

    model_key: ClassVar[str]

    def __init__(self, context: RunContext, model: Any = None, *, dtype: str = "float32", batch_size: int = DEFAULT_BATCH_SIZE):
        # No reference to the context is kept: the shared-embedder cache must not keep it alive.
        torch_dtype_ = weights_dtype(dtype)  # refuse a bad precision before loading anything
        self.dtype = dtype
        self.batch_size = batch_size
        self.device = context.torch_device()
        self.seed: int | None = None
        self.requested_revision: str | None = None
        source: str | None = None  # what from_pretrained read; None when built in memory
        where = f"{self.model_key} model"
        if model is not None:
            self.model, image_processor = self._from_built(model)
            self.model_id = built_model_name(self.model)
            self.revision = resolve_revision(self.model, None, None) or resolved_revision(self.model_id)
        else:
            ref = context.model(self.model_key)
            where = f"{self.model_key} model {ref.id!r}"
            if ref.is_tiny:
                self.model, image_processor = self._build_tiny(context.seed)
                self.seed = context.seed
                self.revision = None
            else:
                source = model_source(ref)
                self.model, image_processor = self._from_pretrained(ref, source)
                self.revision = resolve_revision(self.model, source, ref.revision)
            self.model_id = ref.id
            self.requested_revision = ref.revision
        self.preprocess = preprocess_from_processor(image_processor, where)
        check_input_size(self.preprocess, self.input_resolution, where)
        self._check_loaded(where)
        # Hashed before the move: the tiny model's weights are then float32 on the CPU.
        self.weights = weights_identity(self.model, source=source, revision=self.revision, tiny_seed=self.seed)
        self.model.to(device=self.device, dtype=torch_dtype_)
        self.references = self._reference_cache()
        # (pixel digest, settings) -> embedding; shared with views of this embedder (DINO's other
        # pooling), whose settings differ, so each view finds only its own embeddings.
        self._memo: OrderedDict[tuple[str, str], "torch.Tensor"] = OrderedDict()

    # What each embedder says ----------------------------------------------------------------

    @abstractmethod
    def _from_built(self, model: Any) -> tuple[Any, Any]:
        """(model, image_processor) of a model passed in built; TypeError for a wrong shape."""

    @abstractmethod
    def _build_tiny(self, seed: int) -> tuple[Any, Any]:
        """(model, image_processor) of the tiny profile, random weights from ``seed``."""

    @abstractmethod
    def _from_pretrained(self, ref: ModelRef, source: str) -> tuple[Any, Any]:
        """(model, image_processor) read from a hub id or folder (``relbench.metrics.loading``)."""

    @property
    @abstractmethod
    def input_resolution(self) -> int:
        """The side of the square images the model takes."""

    @property
    @abstractmethod
    def embedding_dim(self) -> int:
        """The size of one embedding."""

    @abstractmethod
    def _forward(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """(B, embedding_dim) features of a batch of preprocessed pixels (not yet normalised)."""

    @abstractmethod
    def _image_settings(self) -> dict[str, Any]:
        """What moves an image embedding: the key of the reference-embedding cache."""

    def _check_loaded(self, where: str) -> None:
        """Further checks of what was loaded, after the input size (none by default)."""

    # Shared ---------------------------------------------------------------------------------

    def _reference_cache(self) -> ReferenceEmbeddings:
        identity = None if self.weights is None else {**self._image_settings(), "weights": self.weights}
        return ReferenceEmbeddings(self.compute_embeddings, self.embedding_dim, identity)

    def embed_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        """(N, D) embeddings, L2-normalised, float32 on the CPU: those computed before (same pixels,
        same settings) from the memo, the others in one ``compute_embeddings`` call."""
        import torch

        tag = json.dumps(self._image_settings(), sort_keys=True, default=str)
        keys = [(image_digest(image), tag) for image in images]
        pending: dict[tuple[str, str], "Image.Image"] = {}
        for image, key in zip(images, keys):
            if key not in self._memo and key not in pending:
                pending[key] = image
        if pending:
            for key, vector in zip(pending, self.compute_embeddings(list(pending.values()))):
                self._memo[key] = vector.clone()  # not a view of the batch: each entry owns its storage
        for key in keys:
            self._memo.move_to_end(key)
        rows = [self._memo[key] for key in keys]
        while len(self._memo) > IMAGE_MEMO_SIZE:
            self._memo.popitem(last=False)
        return torch.stack(rows) if rows else torch.empty(0, self.embedding_dim)

    def compute_embeddings(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        """(N, D) embeddings, L2-normalised, float32 on the CPU, computed now (no memo);
        ``batch_size`` images per forward."""
        import torch

        parts = []
        with torch.inference_mode(), compute_precision(self.dtype):
            for batch in batched(images, self.batch_size):
                pixels = self.preprocess(batch).to(device=self.device, dtype=self.model.dtype)
                parts.append(self._forward(pixels).float().cpu())
        return normalized(parts, self.embedding_dim)


def per_context(cache: dict[int, dict[Any, Any]], context: RunContext) -> dict[Any, Any]:
    """This context's entries of a module's shared-embedder cache; they go when the context does."""
    entries = cache.get(id(context))
    if entries is None:
        entries = cache[id(context)] = {}
        weakref.finalize(context, cache.pop, id(context), None)
    return entries


class ReferenceSimilarityMetric(Metric):
    """Generated image vs each subject's reference images (CLIP-I, DINO).

    Per subject: the mean over its references of ``100 * cos``; the value: the mean over the
    sample's distinct subjects; ``details``: subject id -> its similarity. Reference embeddings
    come from the embedder's ``ReferenceEmbeddings`` (keyed by pixel digest, in memory and on
    disk), so each reference image is embedded once, not once per case, metric or run.
    """

    higher_is_better: ClassVar[bool] = True
    value_range: ClassVar[tuple[float, float]] = VALUE_RANGE
    model_key: ClassVar[str]
    batch_size: int = DEFAULT_BATCH_SIZE

    @abstractmethod
    def embed_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        """(N, D) L2-normalised embeddings."""

    @abstractmethod
    def embed_references(self, images: Sequence["Image.Image"], digests: Sequence[str]) -> "torch.Tensor":
        """(N, D) L2-normalised embeddings of reference images, through the cache."""

    def score(self, samples: Sequence[ScoringSample]) -> list[MetricResult]:
        import torch

        from relbench.metrics.functional.similarity import image_image_similarity

        for sample in samples:
            if len(sample.subject_ids) != len(sample.references):
                raise RelbenchError(
                    f"case {sample.case_id}: {len(sample.subject_ids)} subject ids but {len(sample.references)} reference image sets"
                )
            for subject_id, refs in zip(sample.subject_ids, sample.references):
                if not refs:
                    raise RelbenchError(f"case {sample.case_id}: subject {subject_id!r} has no reference images")

        generated = self.embed_images([sample.image for sample in samples])

        # Every distinct reference image of the batch, looked up (or embedded) once.
        digests = [[[image_digest(image) for image in refs] for refs in sample.references] for sample in samples]
        unique: dict[str, "Image.Image"] = {}
        for sample, sample_digests in zip(samples, digests):
            for refs, ref_digests in zip(sample.references, sample_digests):
                for image, digest in zip(refs, ref_digests):
                    unique.setdefault(digest, image)
        vectors = dict(zip(unique, self.embed_references(list(unique.values()), list(unique))))

        results = []
        for i, (sample, sample_digests) in enumerate(zip(samples, digests)):
            per_subject: dict[str, float] = {}
            for subject_id, ref_digests in zip(sample.subject_ids, sample_digests):
                refs = torch.stack([vectors[digest] for digest in ref_digests])
                per_subject[subject_id] = float(image_image_similarity(generated[i], refs))
            value = sum(per_subject.values()) / len(per_subject)
            results.append(MetricResult(value=value, details=per_subject))
        return results
