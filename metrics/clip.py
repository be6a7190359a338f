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

This module also holds what ``relbench.metrics.dino`` shares: checked loading with one-line errors,
revision resolution, image digests and the reference-similarity metric base.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from relbench.errors import RelbenchError
from relbench.metrics.base import Metric, MetricResult, ScoringSample
from relbench.metrics.embedding_cache import ReferenceEmbeddings, weights_identity
from relbench.metrics.functional.preprocess import ImagePreprocess, preprocess_from_processor
from relbench.metrics.functional.similarity import SCALE, VALUE_RANGE
from relbench.profiles import ModelRef, RunContext, resolved_revision, torch_dtype

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16


# --------------------------------------------------------------------------------------------
# Loading (shared with dino.py)


def model_source(ref: ModelRef) -> str:
    """The string to give ``from_pretrained``: an existing local folder, or a hub id.

    A reference that is written like a path (absolute, ``./``, ``~``, or more than one ``/``) but
    does not exist is refused here: transformers would otherwise answer with a confusing
    "Repo id must be in the form ..." message.
    """
    path = Path(ref.id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise RelbenchError(f"--model {ref.key}={ref.id}: expected a folder saved with save_pretrained, got a file")
        return str(path)
    if ref.id.startswith(("/", "./", "../", "~")) or "\\" in ref.id or ref.id.count("/") > 1:
        raise RelbenchError(f"--model {ref.key}={ref.id}: no such folder")
    return ref.id


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_error(ref: ModelRef, what: str, exc: BaseException) -> RelbenchError:
    revision = f" (revision {ref.revision})" if ref.revision else ""
    return RelbenchError(
        f"{ref.key} model {ref.id!r}{revision}: cannot load {what}: {type(exc).__name__}: {_first_line(exc)}; "
        f"without network, pass --model {ref.key}=/local/path to a folder saved with save_pretrained"
    )


def load_pretrained(model_cls: Any, ref: ModelRef, source: str, **kwargs: Any) -> Any:
    """``model_cls.from_pretrained`` that refuses checkpoints it would silently half-initialise.

    transformers loads e.g. a ViT folder into ``CLIPModel`` with a warning and random weights
    (measured with transformers 5.24); every missing or mismatched weight is an error here.
    """
    try:
        model, info = model_cls.from_pretrained(source, revision=ref.revision, output_loading_info=True, **kwargs)
    except Exception as exc:  # any failure to read a user-named model is a user-facing error
        raise load_error(ref, model_cls.__name__, exc) from exc
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        bad = missing or mismatched
        kind = "missing" if missing else "of the wrong shape"
        raise RelbenchError(
            f"{ref.key} model {ref.id!r}: {len(bad)} weights {kind} for {model_cls.__name__} (e.g. {bad[0]}); "
            f"is it a {model_cls.__name__} checkpoint? Pass --model {ref.key}=ID_OR_PATH of one"
        )
    return model.eval()


def load_component(cls: Any, ref: ModelRef, source: str) -> Any:
    """A tokenizer or image processor, with the same one-line error as the model."""
    try:
        return cls.from_pretrained(source, revision=ref.revision)
    except Exception as exc:
        raise load_error(ref, cls.__name__, exc) from exc


def resolve_revision(model: Any, source: str | None, requested: str | None) -> str | None:
    """The commit actually loaded: the config's ``_commit_hash`` (transformers 4.x), else the
    snapshot folder it came from (local snapshot path or the HF cache entry), else the request."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return str(commit)
    if source:
        if Path(source).exists():
            return resolved_revision(source) or requested
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json", revision=requested)
        except Exception:  # an unusual id or cache layout: fall back to what was asked
            cached = None
        if isinstance(cached, str):
            return resolved_revision(Path(cached).parent) or requested
    return requested


def built_model_name(model: Any) -> str:
    """What to record for a model passed in already built."""
    return str(getattr(model.config, "_name_or_path", "") or f"in-memory {type(model).__name__}")


def check_input_size(preprocess: ImagePreprocess, expected: int, where: str) -> None:
    size = preprocess.output_size
    if size is None or size != (expected, expected):
        raise RelbenchError(
            f"{where}: the image processor gives {size or 'variable-size'} images but the model expects "
            f"{expected}x{expected}; check preprocessor_config.json (size / crop_size)"
        )


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# Digests of live image objects: a reference image is digested by clip_i, dino and the identity
# analyser for every case that uses it (a few ms each at 1024 px). Images are treated as immutable
# while alive: an image changed in place after its first digest keeps its old one.
_DIGESTS: dict[int, tuple["weakref.ref[Image.Image]", str, str, tuple[int, int]]] = {}


def image_digest(image: "Image.Image") -> str:
    """sha1 of the decoded pixels with mode and size: equal for the same picture from any file."""
    key = id(image)
    known = _DIGESTS.get(key)
    if known is not None and known[0]() is image and known[2] == image.mode and known[3] == image.size:
        return known[1]
    digest = hashlib.sha1(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    value = digest.hexdigest()
    try:
        # The entry goes when the image does (before its id can be reused).
        ref = weakref.ref(image, lambda _, key=key: _DIGESTS.pop(key, None))
    except TypeError:  # an object without weak references: not memoised
        return value
    _DIGESTS[key] = (ref, value, image.mode, image.size)
    return value


# --------------------------------------------------------------------------------------------
# The CLIP embedder


class CLIPEmbedder:
    """Loads a CLIP model once and embeds images and texts (L2-normalised, float32, on the CPU)."""

    def __init__(
        self,
        context: RunContext,
        model: Any = None,
        *,
        dtype: str = "float32",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        # No reference to the context is kept: the shared-embedder cache must not keep it alive.
        torch_dtype_ = torch_dtype(dtype)  # refuse a bad dtype before loading anything
        self.dtype = dtype
        self.batch_size = batch_size
        self.device = context.torch_device()
        self.seed: int | None = None
        self.requested_revision: str | None = None
        source: str | None = None  # what from_pretrained read; None when built in memory
        where = "clip model"
        if model is not None:
            self.model, image_processor, self.tokenizer = _unpack_built(model)
            self.model_id = built_model_name(self.model)
            self.revision = resolve_revision(self.model, None, None) or resolved_revision(self.model_id)
        else:
            ref = context.model("clip")
            where = f"clip model {ref.id!r}"
            if ref.is_tiny:
                from relbench.tiny import clip_tokenizer, tiny_clip

                self.model, image_processor = tiny_clip(seed=context.seed)
                self.tokenizer = clip_tokenizer()
                self.seed = context.seed
                self.revision = None
            else:
                from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

                source = model_source(ref)
                self.model = load_pretrained(CLIPModel, ref, source)
                image_processor = load_component(CLIPImageProcessor, ref, source)
                self.tokenizer = load_component(CLIPTokenizer, ref, source)
                self.revision = resolve_revision(self.model, source, ref.revision)
            self.model_id = ref.id
            self.requested_revision = ref.revision
        self.preprocess = preprocess_from_processor(image_processor, where)
        check_input_size(self.preprocess, int(self.model.config.vision_config.image_size), where)
        vocab = int(self.model.config.text_config.vocab_size)
        # A folder without tokenizer files loads as a 2-token tokenizer without any error.
        if self.tokenizer is not None and len(self.tokenizer) != vocab:
            raise RelbenchError(
                f"{where}: the tokenizer has {len(self.tokenizer)} tokens but the text model {vocab}; "
                "does the folder hold the tokenizer files (vocab.json + merges.txt or tokenizer.json)?"
            )
        self.max_text_tokens = int(self.model.config.text_config.max_position_embeddings)
        # Hashed before the move: the tiny model's weights are then float32 on the CPU.
        weights = weights_identity(self.model, source=source, revision=self.revision, tiny_seed=self.seed)
        self.model.to(device=self.device, dtype=torch_dtype_)
        self.references = ReferenceEmbeddings(self.embed_images, int(self.model.config.projection_dim),
                                              None if weights is None else {**self._image_settings(), "weights": weights})

    def embed_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        """(N, D) projected image embeddings, L2-normalised, float32 on the CPU."""
        def forward(pixels: "torch.Tensor") -> "torch.Tensor":
            return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)

        return embed_image_batches(images, self.preprocess, forward, self.batch_size, self.device,
                                   self.model.dtype, int(self.model.config.projection_dim))

    def embed_texts(self, texts: Sequence[str]) -> "torch.Tensor":
        """(N, D) projected text embeddings, L2-normalised, float32 on the CPU; texts longer than
        the model's context (77 tokens for CLIP) are truncated, with a warning."""
        import torch

        if self.tokenizer is None:
            raise RelbenchError(f"clip model {self.model_id!r}: built without a tokenizer, cannot embed prompts")
        parts = []
        with torch.inference_mode():
            for batch in batched(list(texts), self.batch_size):
                for text, ids in zip(batch, self.tokenizer(list(batch))["input_ids"]):
                    if len(ids) > self.max_text_tokens:
                        log.warning("CLIP-T: prompt of %d tokens truncated to %d: %r", len(ids), self.max_text_tokens, text)
                tokens = self.tokenizer(
                    list(batch), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
                ).to(self.device)
                pooled = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
                parts.append(self.model.text_projection(pooled).float().cpu())
            return _normalized(parts, int(self.model.config.projection_dim))

    def _image_settings(self) -> dict[str, Any]:
        """What moves an image embedding: the key of the reference-embedding cache."""
        return {
            "embedder": "clip.image_embeds",
            "model": self.model_id,
            "model_class": "transformers.CLIPModel",
            "revision": self.revision,
            "input_resolution": int(self.model.config.vision_config.image_size),
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
            "input_resolution": int(self.model.config.vision_config.image_size),
            "preprocessing": self.preprocess.describe(),
            "dtype": self.dtype,
        }
        if self.seed is not None:
            settings["seed"] = self.seed
        return settings


# One loaded CLIP per run context and dtype, so that clip_t and clip_i built by the runner from the
# same context (``METRICS.get(name)(context)``) load the model once. Entries go with the context.
_SHARED_EMBEDDERS: dict[int, dict[str, CLIPEmbedder]] = {}


def shared_clip_embedder(context: RunContext, dtype: str = "float32") -> CLIPEmbedder:
    """The CLIP embedder of this context (built on first use, dropped when the context is)."""
    per_context = _SHARED_EMBEDDERS.get(id(context))
    if per_context is None:
        per_context = _SHARED_EMBEDDERS[id(context)] = {}
        weakref.finalize(context, _SHARED_EMBEDDERS.pop, id(context), None)
    if dtype not in per_context:
        per_context[dtype] = CLIPEmbedder(context, dtype=dtype)
    return per_context[dtype]


def embed_image_batches(
    images: Sequence["Image.Image"], preprocess: ImagePreprocess, forward: Callable[["torch.Tensor"], "torch.Tensor"],
    batch_size: int, device: "torch.device", dtype: "torch.dtype", dim: int,
) -> "torch.Tensor":
    """Preprocess and embed images in batches: (N, dim) L2-normalised float32 on the CPU."""
    import torch

    parts = []
    with torch.inference_mode():
        for batch in batched(images, batch_size):
            pixels = preprocess(batch).to(device=device, dtype=dtype)
            parts.append(forward(pixels).float().cpu())
    return _normalized(parts, dim)


def _normalized(parts: list["torch.Tensor"], dim: int) -> "torch.Tensor":
    import torch

    if not parts:
        return torch.empty(0, dim)
    return torch.nn.functional.normalize(torch.cat(parts), dim=-1)


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


def _embedder_for(context: RunContext, model: Any, dtype: str) -> CLIPEmbedder:
    """A built model gets its own embedder; otherwise the context's shared one."""
    return CLIPEmbedder(context, model, dtype=dtype) if model is not None else shared_clip_embedder(context, dtype)


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


class _UsesCLIP(Metric):
    """The CLIP embedder (the run context's shared one unless a built model is given)."""

    def __init__(
        self,
        context: RunContext,
        model: Any = None,
        *,
        embedder: CLIPEmbedder | None = None,
        dtype: str = "float32",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
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
    name: ClassVar[str] = "clip_i"
    model_key: ClassVar[str] = "clip"
    description: ClassVar[str] = "CLIP image-image similarity to each subject's reference images (x100 cosine)"

    def settings(self) -> dict[str, Any]:
        return {
            **self._clip_settings(),
            "pooling": "image_embeds (CLS -> post_layernorm -> visual_projection), L2-normalised",
            "aggregation": "per subject mean over references, then mean over subjects",
        }


class CLIPTScore(_UsesCLIP):
    name: ClassVar[str] = "clip_t"
    model_key: ClassVar[str] = "clip"
    higher_is_better: ClassVar[bool] = True
    value_range: ClassVar[tuple[float, float]] = VALUE_RANGE
    description: ClassVar[str] = "CLIP image-text similarity between the image and its full prompt (x100 cosine)"
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
