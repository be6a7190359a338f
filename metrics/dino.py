"""DINO image-image similarity over transformers' ``ViTModel`` (default ``facebook/dino-vits16``).

Per subject, the mean over its reference images of ``100 * cos`` between DINO features of the
generated image and the reference; the value is the mean over subjects, ``details`` holds the
per-subject values. Two poolings, because published numbers use both:

* ``cls`` (default): the CLS token of the last layer (after the final layer norm), as in the
  DreamBench protocol (DreamBooth) that most customization papers follow;
* ``mean``: the mean of all last hidden states (CLS included), as a public DreamRelation
  reproduction computed it.

The two give different numbers for the same images; the pooling is recorded in ``settings()``.

The model is loaded once per run context and dtype (``shared_dino_embedder``): the ``dino`` metric
and the identity metrics (``identity_dino``, confusion, swap, blend) share it, whatever pooling
each uses, and share the reference-embedding cache of each pooling (memory and disk, see
``relbench.metrics.embedding_cache``).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from relbench.errors import RelbenchError
from relbench.metrics.clip import (
    DEFAULT_BATCH_SIZE,
    ReferenceSimilarityMetric,
    built_model_name,
    check_input_size,
    embed_image_batches,
    load_component,
    load_pretrained,
    model_source,
    resolve_revision,
)
from relbench.metrics.embedding_cache import ReferenceEmbeddings, weights_identity
from relbench.metrics.functional.preprocess import preprocess_from_processor
from relbench.metrics.functional.similarity import SCALE
from relbench.profiles import RunContext, resolved_revision, torch_dtype

if TYPE_CHECKING:
    import torch
    from PIL import Image

POOLINGS = ("cls", "mean")
FEATURES = {"cls": "last-layer CLS token", "mean": "mean of all last-layer tokens (CLS included)"}


def check_pooling(pooling: str, where: str = "dino.pooling") -> None:
    if pooling not in POOLINGS:
        raise RelbenchError(f"{where}: unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")


class DINOEmbedder:
    """Loads a DINO ``ViTModel`` once and embeds images (L2-normalised, float32, on the CPU).

    ``with_pooling`` gives a view with another pooling over the same loaded model.
    """

    def __init__(
        self,
        context: RunContext,
        model: Any = None,
        *,
        pooling: str = "cls",
        dtype: str = "float32",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        # No reference to the context is kept: the shared-embedder cache must not keep it alive.
        check_pooling(pooling)
        torch_dtype_ = torch_dtype(dtype)  # refuse a bad dtype before loading anything
        self.pooling = pooling
        self.dtype = dtype
        self.batch_size = batch_size
        self.device = context.torch_device()
        self.seed: int | None = None
        self.requested_revision: str | None = None
        source: str | None = None  # what from_pretrained read; None when built in memory
        where = "dino model"
        if model is not None:
            if not isinstance(model, (tuple, list)) or len(model) != 2:
                raise TypeError("a built DINO model is passed as (ViTModel, image_processor)")
            self.model, processor = model
            self.model_id = built_model_name(self.model)
            self.revision = resolve_revision(self.model, None, None) or resolved_revision(self.model_id)
        else:
            ref = context.model("dino")
            where = f"dino model {ref.id!r}"
            if ref.is_tiny:
                from relbench.tiny import tiny_dino

                self.model, processor = tiny_dino(seed=context.seed)
                self.seed = context.seed
                self.revision = None
            else:
                from transformers import ViTImageProcessor, ViTModel

                source = model_source(ref)
                # No pooler: DINO checkpoints have none and neither pooling here uses it.
                self.model = load_pretrained(ViTModel, ref, source, add_pooling_layer=False)
                processor = load_component(ViTImageProcessor, ref, source)
                self.revision = resolve_revision(self.model, source, ref.revision)
            self.model_id = ref.id
            self.requested_revision = ref.revision
        self.preprocess = preprocess_from_processor(processor, where)
        check_input_size(self.preprocess, int(self.model.config.image_size), where)
        # Hashed before the move: the tiny model's weights are then float32 on the CPU.
        self.weights = weights_identity(self.model, source=source, revision=self.revision, tiny_seed=self.seed)
        self.model.to(device=self.device, dtype=torch_dtype_)
        self.references = self._reference_cache()

    def _reference_cache(self) -> ReferenceEmbeddings:
        identity = None if self.weights is None else {**self._image_settings(), "weights": self.weights}
        return ReferenceEmbeddings(self.embed_images, int(self.model.config.hidden_size), identity)

    def with_pooling(self, pooling: str) -> "DINOEmbedder":
        """The same loaded model with another pooling (and that pooling's own reference cache)."""
        check_pooling(pooling)
        if pooling == self.pooling:
            return self
        other = copy.copy(self)
        other.pooling = pooling
        other.references = other._reference_cache()
        return other

    def embed_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        """(N, D) pooled last-layer features, L2-normalised, float32 on the CPU."""
        pooling = self.pooling

        def forward(pixels: "torch.Tensor") -> "torch.Tensor":
            hidden = self.model(pixel_values=pixels).last_hidden_state  # (B, 1 + patches, D), layer-normed
            return hidden[:, 0] if pooling == "cls" else hidden.mean(dim=1)

        return embed_image_batches(images, self.preprocess, forward, self.batch_size, self.device,
                                   self.model.dtype, int(self.model.config.hidden_size))

    def _image_settings(self) -> dict[str, Any]:
        """What moves an embedding: the key of the reference-embedding cache."""
        return {
            "embedder": "dino.last_hidden_state",
            "model": self.model_id,
            "model_class": "transformers.ViTModel",
            "revision": self.revision,
            "input_resolution": int(self.model.config.image_size),
            "preprocessing": self.preprocess.describe(),
            "pooling": self.pooling,
            "dtype": self.dtype,
        }

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "model": self.model_id,
            "model_class": "transformers.ViTModel",
            "requested_revision": self.requested_revision,
            "revision": self.revision,
            "pooling": self.pooling,
            "features": FEATURES[self.pooling],
            "input_resolution": int(self.model.config.image_size),
            "preprocessing": self.preprocess.describe(),
            "dtype": self.dtype,
        }
        if self.seed is not None:
            settings["seed"] = self.seed
        return settings


# One loaded DINO per run context and dtype, so that ``dino`` and the identity metrics built by the
# runner from the same context load the model once; one view per pooling. Entries go with the context.
_SHARED_EMBEDDERS: dict[int, dict[tuple[str, str], DINOEmbedder]] = {}


def shared_dino_embedder(context: RunContext, pooling: str = "cls", dtype: str = "float32") -> DINOEmbedder:
    """The DINO embedder of this context for ``pooling`` (built on first use, dropped with the context)."""
    check_pooling(pooling)
    torch_dtype(dtype)
    per_context = _SHARED_EMBEDDERS.get(id(context))
    if per_context is None:
        per_context = _SHARED_EMBEDDERS[id(context)] = {}
        weakref.finalize(context, _SHARED_EMBEDDERS.pop, id(context), None)
    if (pooling, dtype) not in per_context:
        loaded = next((e for (_, d), e in per_context.items() if d == dtype), None)
        per_context[(pooling, dtype)] = (
            loaded.with_pooling(pooling) if loaded is not None else DINOEmbedder(context, pooling=pooling, dtype=dtype)
        )
    return per_context[(pooling, dtype)]


class DINOScore(ReferenceSimilarityMetric):
    name: ClassVar[str] = "dino"
    model_key: ClassVar[str] = "dino"
    description: ClassVar[str] = "DINO ViT-S/16 image-image similarity to each subject's reference images (x100 cosine)"

    def __init__(
        self,
        context: RunContext,
        model: Any = None,
        *,
        pooling: str = "cls",
        dtype: str = "float32",
        batch_size: int = DEFAULT_BATCH_SIZE,
        embedder: DINOEmbedder | None = None,
    ):
        """``model``: a built ``(ViTModel, image_processor)`` (own embedder); ``embedder``: one to
        share; neither: the context's shared embedder."""
        super().__init__(context)
        check_pooling(pooling)
        torch_dtype(dtype)
        self.batch_size = batch_size
        if embedder is not None:
            self.embedder = embedder.with_pooling(pooling)
        elif model is not None:
            self.embedder = DINOEmbedder(context, model, pooling=pooling, dtype=dtype)
        else:
            self.embedder = shared_dino_embedder(context, pooling, dtype)
        self.pooling = pooling

    def embed_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        self.embedder.batch_size = self.batch_size
        return self.embedder.embed_images(images)

    def embed_references(self, images: Sequence["Image.Image"], digests: Sequence[str]) -> "torch.Tensor":
        self.embedder.batch_size = self.batch_size
        return self.embedder.references(images, digests)

    def settings(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "profile": self.context.profile,
            **self.embedder.settings(),
            "scale": SCALE,
            "clamp": None,
            "aggregation": "per subject mean over references, then mean over subjects",
        }
