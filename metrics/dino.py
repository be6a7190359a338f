"""DINO image-image similarity over transformers' ``ViTModel`` (default ``facebook/dino-vits16``).

Per subject, the mean over its reference images of ``100 * cos`` between DINO features of the
generated image and the reference; the value is the mean over subjects, ``details`` holds the
per-subject values. Two poolings, because published numbers use both:

* ``cls`` (default): the CLS token of the last layer (after the final layer norm), as in the
  DreamBench protocol (DreamBooth) that most customization papers follow;
* ``mean``: the mean of all last hidden states (CLS included), as a public DreamRelation
  reproduction computed it.

The two give different numbers for the same images; the pooling is recorded in ``settings()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from relbench.errors import RelbenchError
from relbench.metrics.clip import (
    DEFAULT_BATCH_SIZE,
    ReferenceSimilarityMetric,
    embed_image_batches,
    built_model_name,
    check_input_size,
    load_component,
    load_pretrained,
    model_source,
    resolve_revision,
)
from relbench.metrics.functional.preprocess import preprocess_from_processor
from relbench.metrics.functional.similarity import SCALE
from relbench.profiles import RunContext, resolved_revision, torch_dtype

if TYPE_CHECKING:
    import torch
    from PIL import Image

POOLINGS = ("cls", "mean")


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
    ):
        super().__init__(context)
        if pooling not in POOLINGS:
            raise RelbenchError(f"dino.pooling: unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        torch_dtype_ = torch_dtype(dtype)  # refuse a bad dtype before loading anything
        self.dtype = dtype
        self.batch_size = batch_size
        self.device = context.torch_device()
        self.seed: int | None = None
        self.requested_revision: str | None = None
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
        self.model.to(device=self.device, dtype=torch_dtype_)

    def embed_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        """(N, D) pooled last-layer features, L2-normalised, float32 on the CPU."""
        def forward(pixels: "torch.Tensor") -> "torch.Tensor":
            hidden = self.model(pixel_values=pixels).last_hidden_state  # (B, 1 + patches, D), layer-normed
            return hidden[:, 0] if self.pooling == "cls" else hidden.mean(dim=1)

        return embed_image_batches(images, self.preprocess, forward, self.batch_size, self.device,
                                   self.model.dtype, int(self.model.config.hidden_size))

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "metric": self.name,
            "profile": self.context.profile,
            "model": self.model_id,
            "model_class": "transformers.ViTModel",
            "requested_revision": self.requested_revision,
            "revision": self.revision,
            "pooling": self.pooling,
            "features": "last-layer CLS token" if self.pooling == "cls" else "mean of all last-layer tokens (CLS included)",
            "input_resolution": int(self.model.config.image_size),
            "preprocessing": self.preprocess.describe(),
            "dtype": self.dtype,
            "scale": SCALE,
            "clamp": None,
            "aggregation": "per subject mean over references, then mean over subjects",
        }
        if self.seed is not None:
            settings["seed"] = self.seed
        return settings
