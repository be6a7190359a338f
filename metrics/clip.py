"""CLIP-T and CLIP-I over transformers' ``CLIPModel``.

* CLIP-T (``clip_t``): ``100 * cos`` between the generated image and the full prompt.
* CLIP-I (``clip_i``): per subject, the mean over its reference images of ``100 * cos`` with the
  generated image; the value is the mean over subjects, the per-subject values go in ``details``.

Embeddings are CLIP's projected ones (``image_embeds`` = CLS token after ``post_layernorm`` and
``visual_projection``; ``text_embeds`` = EOS token after ``final_layer_norm`` and
``text_projection``), L2-normalised. The math is in ``relbench.metrics.functional.similarity``.

Models: ``tiny`` profile -> ``relbench.tiny.tiny_clip(seed)`` with the offline CLIP tokenizer;
``full`` -> ``context.model("clip")`` (default ``openai/clip-vit-large-patch14``), a hub id (HF cache
honoured) or a local folder saved with ``save_pretrained``. An already built
``(model, image_processor, tokenizer)`` or ``(model, CLIPProcessor)`` may be passed instead.

The embedder's construction (shared with DINO) is ``relbench.metrics.embedder.ImageEmbedder``;
model loading is ``relbench.metrics.loading``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from relbench.errors import RelbenchError
from relbench.metrics.base import Metric, MetricResult, ScoringSample
from relbench.metrics.clip_meta import CLIP_I, CLIP_T
from relbench.metrics.embedder import (
    DEFAULT_BATCH_SIZE,
    ImageEmbedder,
    ReferenceSimilarityMetric,
    compute_precision,
    default_precision,
    normalized,
    per_context,
)
from relbench.metrics.functional.similarity import SCALE
from relbench.metrics.loading import batched, load_component, load_pretrained
from relbench.profiles import ModelRef, RunContext

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The CLIP embedder


class CLIPEmbedder(ImageEmbedder):
    """Loads a CLIP model once and embeds images and texts (L2-normalised, float32, on the CPU)."""

    model_key: ClassVar[str] = "clip"
    tokenizer: Any

    def _from_built(self, model: Any) -> tuple[Any, Any]:
        built, image_processor, self.tokenizer = _unpack_built(model)
        return built, image_processor

    def _build_tiny(self, seed: int) -> tuple[Any, Any]:
        from relbench.tiny import clip_tokenizer, tiny_clip

        built = tiny_clip(seed=seed)
        self.tokenizer = clip_tokenizer()
        return built

    def _from_pretrained(self, ref: ModelRef, source: str) -> tuple[Any, Any]:
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        model = load_pretrained(CLIPModel, ref, source)
        image_processor = load_component(CLIPImageProcessor, ref, source)
        self.tokenizer = load_component(CLIPTokenizer, ref, source)
        return model, image_processor

    @property
    def input_resolution(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def _check_loaded(self, where: str) -> None:
        vocab = int(self.model.config.text_config.vocab_size)
        # A folder without tokenizer files loads as a 2-token tokenizer without any error.
        if self.tokenizer is not None and len(self.tokenizer) != vocab:
            raise RelbenchError(
                f"{where}: the tokenizer has {len(self.tokenizer)} tokens but the text model {vocab}; "
                "does the folder hold the tokenizer files (vocab.json + merges.txt or tokenizer.json)?"
            )
        self.max_text_tokens = int(self.model.config.text_config.max_position_embeddings)

    def _forward(self, pixels: "torch.Tensor") -> "torch.Tensor":
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)

    def embed_texts(self, texts: Sequence[str]) -> "torch.Tensor":
        """(N, D) projected text embeddings, L2-normalised, float32 on the CPU; texts longer than
        the model's context (77 tokens for CLIP) are truncated, with a warning."""
        import torch

        if self.tokenizer is None:
            raise RelbenchError(f"clip model {self.model_id!r}: built without a tokenizer, cannot embed prompts")
        parts = []
        with torch.inference_mode(), compute_precision(self.dtype):
            for batch in batched(list(texts), self.batch_size):
                for text, ids in zip(batch, self.tokenizer(list(batch))["input_ids"]):
                    if len(ids) > self.max_text_tokens:
                        log.warning("CLIP-T: prompt of %d tokens truncated to %d: %r", len(ids), self.max_text_tokens, text)
                tokens = self.tokenizer(
                    list(batch), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
                ).to(self.device)
                pooled = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
                parts.append(self.model.text_projection(pooled).float().cpu())
            return normalized(parts, self.embedding_dim)

    def _image_settings(self) -> dict[str, Any]:
        """What moves an image embedding: the key of the reference-embedding cache."""
        return {
            "embedder": "clip.image_embeds",
            "model": self.model_id,
            "model_class": "transformers.CLIPModel",
            "revision": self.revision,
            "input_resolution": self.input_resolution,
            "preprocessing": self.preprocess.describe(),
            "pooling": "CLS -> post_layernorm -> visual_projection, L2-normalised",
            "dtype": self.dtype,
        }

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "model": self.model_id,
            "model_class": "transformers.CLIPModel",
            "requested_revision": self.requested_revision,
            "revision": self.revision,
            "input_resolution": self.input_resolution,
            "preprocessing": self.preprocess.describe(),
            "dtype": self.dtype,
        }
        if self.seed is not None:
            settings["seed"] = self.seed
        return settings


# One loaded CLIP per run context and dtype, so that clip_t, clip_i, clip_r and the identity
# metrics built by the runner from the same context (``METRICS.get(name)(context)``) load the model
# once and embed each generated image once (the embedder's memo). Entries go with the context.
_SHARED_EMBEDDERS: dict[int, dict[str, CLIPEmbedder]] = {}


def shared_clip_embedder(context: RunContext, dtype: str | None = None) -> CLIPEmbedder:
    """The CLIP embedder of this context (built on first use, dropped when the context is);
    ``dtype`` None: ``default_precision()``."""
    dtype = dtype or default_precision(context)
    embedders = per_context(_SHARED_EMBEDDERS, context)
    if dtype not in embedders:
        embedders[dtype] = CLIPEmbedder(context, dtype=dtype)
    return embedders[dtype]


def _unpack_built(model: Any) -> tuple[Any, Any, Any]:
    """(model, CLIPProcessor) or (model, image_processor[, tokenizer]) -> the three parts."""
    if not isinstance(model, (tuple, list)) or len(model) not in (2, 3):
        raise TypeError("a built CLIP model is passed as (model, CLIPProcessor) or (model, image_processor, tokenizer)")
    if len(model) == 3:
        return model[0], model[1], model[2]
    processor = model[1]
    if hasattr(processor, "image_processor"):
        return model[0], processor.image_processor, getattr(processor, "tokenizer", None)
    return model[0], processor, None


# --------------------------------------------------------------------------------------------
# Metrics


def _embedder_for(context: RunContext, model: Any, dtype: str | None) -> CLIPEmbedder:
    """A built model gets its own embedder; otherwise the context's shared one."""
    if model is not None:
        return CLIPEmbedder(context, model, dtype=dtype or default_precision(context))
    return shared_clip_embedder(context, dtype)


class _UsesCLIP(Metric):
    """The CLIP embedder (the run context's shared one unless a built model is given)."""

    def __init__(
        self,
        context: RunContext,
        model: Any = None,
        *,
        embedder: CLIPEmbedder | None = None,
        dtype: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        """``dtype``: a precision of ``relbench.metrics.embedder.PRECISIONS``; None: ``default_precision()``."""
        super().__init__(context)
        self.batch_size = batch_size
        self.embedder = embedder or _embedder_for(context, model, dtype)

    def embed_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        self.embedder.batch_size = self.batch_size
        return self.embedder.embed_images(images)

    def embed_references(self, images: Sequence["Image.Image"], digests: Sequence[str]) -> "torch.Tensor":
        self.embedder.batch_size = self.batch_size
        return self.embedder.references(images, digests)

    def _clip_settings(self) -> dict[str, Any]:
        return {"metric": self.name, "profile": self.context.profile, **self.embedder.settings(), "scale": SCALE, "clamp": None}


class CLIPIScore(_UsesCLIP, ReferenceSimilarityMetric):
    info = CLIP_I

    def settings(self) -> dict[str, Any]:
        return {
            **self._clip_settings(),
            "pooling": "image_embeds (CLS -> post_layernorm -> visual_projection), L2-normalised",
            "aggregation": "per subject mean over references, then mean over subjects",
        }


class CLIPTScore(_UsesCLIP):
    info = CLIP_T
    batch_size: int = DEFAULT_BATCH_SIZE

    def __init__(self, context: RunContext, model: Any = None, **kwargs: Any):
        super().__init__(context, model, **kwargs)
        self._text_cache: dict[str, "torch.Tensor"] = {}  # prompts repeat across seeds and methods

    def score(self, samples: Sequence[ScoringSample]) -> list[MetricResult]:
        import torch

        from relbench.metrics.functional.similarity import clip_t_score

        images = self.embed_images([sample.image for sample in samples])
        new_prompts = list(dict.fromkeys(s.prompt for s in samples if s.prompt not in self._text_cache))
        if new_prompts:
            self._text_cache.update(zip(new_prompts, self.embedder.embed_texts(new_prompts)))
        if not samples:
            return []
        texts = torch.stack([self._text_cache[sample.prompt] for sample in samples])
        return [MetricResult(value=float(v)) for v in clip_t_score(images, texts)]

    def settings(self) -> dict[str, Any]:
        return {
            **self._clip_settings(),
            "pooling": "image_embeds (CLS -> visual_projection) vs text_embeds (EOS -> text_projection), L2-normalised",
            "text": "full prompt",
            "text_max_tokens": self.embedder.max_text_tokens,
        }
