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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from relbench.errors import RelbenchError
from relbench.metrics.dino_meta import INFO
from relbench.metrics.embedder import (
    DEFAULT_BATCH_SIZE,
    ImageEmbedder,
    ReferenceSimilarityMetric,
    check_precision,
    default_precision,
    per_context,
)
from relbench.metrics.functional.similarity import SCALE
from relbench.metrics.loading import load_component, load_pretrained
from relbench.profiles import ModelRef, RunContext

if TYPE_CHECKING:
    import torch
    from PIL import Image

POOLINGS = ("cls", "mean")
FEATURES = {"cls": "last-layer CLS token", "mean": "mean of all last-layer tokens (CLS included)"}


def check_pooling(pooling: str, where: str = "dino.pooling") -> None:
    if pooling not in POOLINGS:
        raise RelbenchError(f"{where}: unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")


class DINOEmbedder(ImageEmbedder):
    """Loads a DINO ``ViTModel`` once and embeds images (L2-normalised, float32, on the CPU).

    ``with_pooling`` gives a view with another pooling over the same loaded model.
    """

    model_key: ClassVar[str] = "dino"

    def __init__(
        self,
        context: RunContext,
        model: Any = None,
        *,
        pooling: str = "cls",
        dtype: str = "float32",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        check_pooling(pooling)
        self.pooling = pooling  # before loading: the reference cache is keyed by it
        super().__init__(context, model, dtype=dtype, batch_size=batch_size)

    def _from_built(self, model: Any) -> tuple[Any, Any]:
        if not isinstance(model, (tuple, list)) or len(model) != 2:
            raise TypeError("a built DINO model is passed as (ViTModel, image_processor)")
        return model[0], model[1]

    def _build_tiny(self, seed: int) -> tuple[Any, Any]:
        from relbench.tiny import tiny_dino

        return tiny_dino(seed=seed)

    def _from_pretrained(self, ref: ModelRef, source: str) -> tuple[Any, Any]:
        from transformers import ViTImageProcessor, ViTModel

        # No pooler: DINO checkpoints have none and neither pooling here uses it.
        model = load_pretrained(ViTModel, ref, source, add_pooling_layer=False)
        return model, load_component(ViTImageProcessor, ref, source)

    @property
    def input_resolution(self) -> int:
        return int(self.model.config.image_size)

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def with_pooling(self, pooling: str) -> "DINOEmbedder":
        """The same loaded model with another pooling (and that pooling's own reference cache)."""
        check_pooling(pooling)
        if pooling == self.pooling:
            return self
        other = copy.copy(self)
        other.pooling = pooling
        other.references = other._reference_cache()
        return other

    def _forward(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """Pooled last-layer features."""
        hidden = self.model(pixel_values=pixels).last_hidden_state  # (B, 1 + patches, D), layer-normed
        return hidden[:, 0] if self.pooling == "cls" else hidden.mean(dim=1)

    def _image_settings(self) -> dict[str, Any]:
        """What moves an embedding: the key of the reference-embedding cache."""
        return {
            "embedder": "dino.last_hidden_state",
            "model": self.model_id,
            "model_class": "transformers.ViTModel",
            "revision": self.revision,
            "input_resolution": self.input_resolution,
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
            "input_resolution": self.input_resolution,
            "preprocessing": self.preprocess.describe(),
            "dtype": self.dtype,
        }
        if self.seed is not None:
            settings["seed"] = self.seed
        return settings


# One loaded DINO per run context and dtype, so that ``dino`` and the identity metrics built by the
# runner from the same context load the model once; one view per pooling. Entries go with the context.
_SHARED_EMBEDDERS: dict[int, dict[tuple[str, str], DINOEmbedder]] = {}


def shared_dino_embedder(context: RunContext, pooling: str = "cls", dtype: str | None = None) -> DINOEmbedder:
    """The DINO embedder of this context for ``pooling`` (built on first use, dropped with the
    context); ``dtype`` None: ``default_precision()``."""
    check_pooling(pooling)
    dtype = check_precision(dtype or default_precision(context))
    embedders = per_context(_SHARED_EMBEDDERS, context)
    if (pooling, dtype) not in embedders:
        loaded = next((e for (_, d), e in embedders.items() if d == dtype), None)
        embedders[(pooling, dtype)] = (
            loaded.with_pooling(pooling) if loaded is not None else DINOEmbedder(context, pooling=pooling, dtype=dtype)
        )
    return embedders[(pooling, dtype)]


class DINOScore(ReferenceSimilarityMetric):
    info = INFO

    def __init__(
        self,
        context: RunContext,
        model: Any = None,
        *,
        pooling: str = "cls",
        dtype: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        embedder: DINOEmbedder | None = None,
    ):
        """``model``: a built ``(ViTModel, image_processor)`` (own embedder); ``embedder``: one to
        share; neither: the context's shared embedder. ``dtype``: a precision
        (``relbench.metrics.embedder.PRECISIONS``); None: ``default_precision()``."""
        super().__init__(context)
        check_pooling(pooling)
        dtype = check_precision(dtype or default_precision(context))
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
