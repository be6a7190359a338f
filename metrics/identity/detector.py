"""Open-vocabulary detection of each subject by its class noun (OWLv2 / OWL-ViT via transformers).

Models: ``tiny`` profile -> ``tiny_owlv2(seed)``, an ``Owlv2ForObjectDetection`` built from a small
config with seeded random weights, with the offline CLIP tokenizer (``relbench.tiny.clip_tokenizer``)
for its text queries; ``full`` -> the ``detector`` model key, default
``google/owlv2-base-patch16-ensemble``: a hub id (HF cache honoured) or a local folder saved with
``save_pretrained``. An already built ``(model, Owlv2Processor)`` or
``(model, image_processor, tokenizer)`` may be passed instead.

Preprocessing is done here, from the processor config's numbers (size, mean, std), not by the
transformers processor object, for the reason given in ``relbench.metrics.functional.preprocess``:
the installed version would otherwise move the pixels. It is measurably version dependent for
OWLv2: transformers 4.x pads to a square with grey (0.5) "as per the original OWLv2
implementation", transformers 5.24 pads with 0.0. relbench follows the original: rescale to [0, 1],
pad bottom/right to a square with 0.5, resize (bilinear with antialiasing, torch), normalise.
OWL-ViT (v1) processors do not pad; their images are resized to the square directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from relbench.errors import RelbenchError
from relbench.metrics.loading import (
    batched,
    built_model_name,
    load_component,
    load_error,
    load_pretrained,
    model_source,
    resolve_revision,
)
from relbench.metrics.embedder import compute_precision, weights_dtype
from relbench.profiles import FULL_MODELS, ModelRef, RunContext, resolved_revision

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

DETECTOR_KEY = "detector"
DEFAULT_DETECTOR = ("google/owlv2-base-patch16-ensemble", "main")
DEFAULT_QUERY_TEMPLATE = "a photo of a {noun}"
# The original OWLv2 pads to a square with grey 0.5 (in [0, 1] pixel units) before resizing.
OWLV2_PAD_VALUE = 0.5

# model_type in config.json -> transformers classes (model, image processor).
_SUPPORTED = {
    "owlv2": ("Owlv2ForObjectDetection", "Owlv2ImageProcessor"),
    "owlvit": ("OwlViTForObjectDetection", "OwlViTImageProcessor"),
}


def detector_ref(context: RunContext) -> ModelRef:
    """The ``detector`` model of this context: an override, the tiny config, or OWLv2 by default."""
    if context.is_tiny or DETECTOR_KEY in context.model_overrides or DETECTOR_KEY in FULL_MODELS:
        return context.model(DETECTOR_KEY)
    return ModelRef(DETECTOR_KEY, *DEFAULT_DETECTOR)


def tiny_owlv2(seed: int = 0) -> tuple[Any, Any]:
    """(Owlv2ForObjectDetection, Owlv2ImageProcessor) with random weights: 64 px, 8 px patches
    (64 boxes per image), 32-wide towers over the real 49408-token CLIP vocabulary, 16-token queries."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor

    from relbench.tiny import seeded, tiny_clip_text_config

    config = Owlv2Config(
        text_config=tiny_clip_text_config(max_position_embeddings=16, hidden_act="quick_gelu", pad_token_id=0),
        vision_config=dict(image_size=64, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=4, hidden_act="quick_gelu"),
        projection_dim=32,
    )
    with seeded(seed):
        model = Owlv2ForObjectDetection(config).eval()
        # transformers gives the detection heads unit-variance weights: a random model's sigmoids
        # then saturate (scores exactly 1.0, boxes collapsed onto the image border). Weights of
        # std 1/sqrt(fan_in) keep outputs O(1), as in a trained model: boxes near each patch's
        # prior box, scores spread around 0.5.
        with torch.no_grad():
            for head in (model.box_head, model.class_head):
                for layer in head.modules():
                    if isinstance(layer, torch.nn.Linear):
                        layer.weight.normal_(std=layer.in_features**-0.5)
                        layer.bias.zero_()
    return model, Owlv2ImageProcessor(size={"height": 64, "width": 64})


@dataclass(frozen=True)
class DetectorPreprocess:
    """Rescale, pad to a square (optional), resize, normalise: PIL image -> (3, H, W) float32."""

    size: tuple[int, int]  # (height, width) the model expects
    pad: bool  # pad bottom/right to a square first (OWLv2), or resize as is (OWL-ViT)
    pad_value: float = OWLV2_PAD_VALUE
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rescale_factor: float = 1 / 255

    def __call__(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        import torch

        return torch.stack([self._one(image) for image in images])

    def _one(self, image: "Image.Image") -> "torch.Tensor":
        import torch

        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * np.float32(self.rescale_factor)
        if self.pad:
            height, width = pixels.shape[:2]
            side = max(height, width)
            square = np.full((side, side, 3), self.pad_value, dtype=np.float32)
            square[:height, :width] = pixels
            pixels = square
        tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
        if tuple(tensor.shape[-2:]) != self.size:
            tensor = torch.nn.functional.interpolate(tensor, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (tensor[0] - mean) / std

    def describe(self) -> dict[str, Any]:
        return {
            "implementation": "relbench (torch bilinear resize with antialiasing)",
            "pad_to_square": {"side": "bottom/right", "value": self.pad_value} if self.pad else None,
            "resize": {"height": self.size[0], "width": self.size[1]},
            "rescale_factor": self.rescale_factor,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def preprocess_from_config(processor: Any, pad: bool, where: str) -> DetectorPreprocess:
    config: dict[str, Any] = processor.to_dict()
    size = config.get("size")
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if not isinstance(size, dict) or not size.get("height") or not size.get("width"):
        raise RelbenchError(f"{where}: preprocessor config size {size!r}: expected {{'height': H, 'width': W}}")

    def three(name: str) -> tuple[float, float, float]:
        value = config.get(name)
        if isinstance(value, (list, tuple)) and len(value) == 3:
            return (float(value[0]), float(value[1]), float(value[2]))
        raise RelbenchError(f"{where}: preprocessor config {name} {value!r}: expected three numbers (R, G, B)")

    return DetectorPreprocess(
        size=(int(size["height"]), int(size["width"])),
        pad=pad and bool(config.get("do_pad", True)),
        mean=three("image_mean") if config.get("do_normalize", True) else (0.0, 0.0, 0.0),
        std=three("image_std") if config.get("do_normalize", True) else (1.0, 1.0, 1.0),
        rescale_factor=float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0,
    )


@dataclass(frozen=True)
class Detections:
    """Candidate boxes of one image and their scores for each of the image's queries."""

    boxes: np.ndarray  # (M, 4) pixel x0, y0, x1, y1 in the image
    scores: np.ndarray  # (M, Q) sigmoid score of each candidate for each query (the image's nouns, in order)
    best: np.ndarray  # (Q,) highest score anywhere in the image for each query, candidate or not


class OpenVocabularyDetector:
    """Loads OWLv2 / OWL-ViT once; finds candidate boxes for each image's class nouns."""

    def __init__(
        self,
        context: RunContext,
        model: Any = None,
        *,
        query_template: str = DEFAULT_QUERY_TEMPLATE,
        top_k: int = 10,
        nms_iou: float = 0.5,
        dtype: str = "float32",
        batch_size: int = 4,
    ):
        # No reference to the context is kept (the identity analyser is shared per context).
        if "{noun}" not in query_template:
            raise RelbenchError(f"identity.query_template: {query_template!r} must contain {{noun}}, e.g. {DEFAULT_QUERY_TEMPLATE!r}")
        if top_k < 1:
            raise RelbenchError(f"identity.top_k: expected a positive number of boxes per query, got {top_k}")
        torch_dtype_ = weights_dtype(dtype)  # a precision, as for the embedders (tf32 included)
        self.query_template = query_template
        self.top_k = top_k
        self.nms_iou = nms_iou
        self.dtype = dtype
        self.batch_size = batch_size
        self.device = context.torch_device()
        self.seed: int | None = None
        self.requested_revision: str | None = None
        where = "detector model"
        if model is not None:
            self.model, image_processor, self.tokenizer = _unpack_built(model)
            self.model_id = built_model_name(self.model)
            self.revision = resolve_revision(self.model, None, None) or resolved_revision(self.model_id)
        else:
            ref = detector_ref(context)
            where = f"detector model {ref.id!r}"
            if ref.is_tiny:
                from relbench.tiny import clip_tokenizer

                self.model, image_processor = tiny_owlv2(seed=context.seed)
                self.tokenizer = clip_tokenizer()
                self.seed = context.seed
                self.revision = None
            else:
                self.model, image_processor, self.tokenizer, self.revision = _load(ref)
            self.model_id = ref.id
            self.requested_revision = ref.revision
        self.model_type = str(getattr(self.model.config, "model_type", ""))
        if self.model_type not in _SUPPORTED:
            raise RelbenchError(f"{where}: model type {self.model_type!r} is not supported; expected an OWLv2 or OWL-ViT checkpoint")
        self.preprocess = preprocess_from_config(image_processor, pad=self.model_type == "owlv2", where=where)
        expected = int(self.model.config.vision_config.image_size)
        if self.preprocess.size != (expected, expected):
            raise RelbenchError(
                f"{where}: the image processor gives {self.preprocess.size[0]}x{self.preprocess.size[1]} images but the "
                f"model expects {expected}x{expected}; check preprocessor_config.json (size)"
            )
        vocab = int(self.model.config.text_config.vocab_size)
        if self.tokenizer is None or len(self.tokenizer) != vocab:
            found = "no tokenizer" if self.tokenizer is None else f"a tokenizer of {len(self.tokenizer)} tokens"
            raise RelbenchError(f"{where}: {found} but the text model has {vocab}; does the folder hold the tokenizer files?")
        self.max_query_tokens = int(self.model.config.text_config.max_position_embeddings)
        self.model.to(device=self.device, dtype=torch_dtype_)

    def query(self, noun: str) -> str:
        return self.query_template.format(noun=noun)

    def detect(self, images: Sequence["Image.Image"], nouns: Sequence[Sequence[str]]) -> list[Detections]:
        """Per image, candidate boxes for its nouns (``nouns[k]`` are image k's queries, in order)."""
        import torch

        from relbench.metrics.functional.identity import owl_boxes_to_pixels, select_candidates

        if len(images) != len(nouns):
            raise ValueError(f"detect: {len(images)} images but {len(nouns)} noun lists")
        out: list[Detections] = []
        with torch.inference_mode(), compute_precision(self.dtype):
            for batch in batched(list(zip(images, nouns)), self.batch_size):
                # One forward per batch: every image is scored against the union of the batch's queries.
                queries = list(dict.fromkeys(self.query(noun) for _, image_nouns in batch for noun in image_nouns))
                column = {query: q for q, query in enumerate(queries)}
                tokens = self._tokens(queries)
                pixels = self.preprocess([image for image, _ in batch]).to(device=self.device, dtype=self.model.dtype)
                outputs = self.model(
                    input_ids=tokens["input_ids"].repeat(len(batch), 1),
                    attention_mask=tokens["attention_mask"].repeat(len(batch), 1),
                    pixel_values=pixels,
                )
                scores = torch.sigmoid(outputs.logits.float()).cpu()  # (B, P, Q)
                boxes = outputs.pred_boxes.float().cpu()  # (B, P, 4) cx, cy, w, h
                for k, (image, image_nouns) in enumerate(batch):
                    cols = [column[self.query(noun)] for noun in image_nouns]
                    image_scores = scores[k][:, cols]
                    pixel_boxes = owl_boxes_to_pixels(boxes[k], image.width, image.height, padded=self.preprocess.pad)
                    keep = select_candidates(image_scores, pixel_boxes, self.top_k, self.nms_iou) if cols else []
                    out.append(Detections(
                        boxes=pixel_boxes[keep].numpy().astype(np.float64).reshape(-1, 4),
                        scores=image_scores[keep].numpy().astype(np.float64).reshape(-1, len(cols)),
                        best=image_scores.max(dim=0).values.numpy().astype(np.float64) if cols else np.zeros(0),
                    ))
        return out

    def _tokens(self, queries: list[str]) -> dict[str, "torch.Tensor"]:
        for query, ids in zip(queries, self.tokenizer(queries)["input_ids"]):
            if len(ids) > self.max_query_tokens:
                log.warning("detector: query of %d tokens truncated to %d: %r", len(ids), self.max_query_tokens, query)
        tokens = self.tokenizer(queries, padding="max_length", truncation=True, max_length=self.max_query_tokens, return_tensors="pt")
        return {"input_ids": tokens["input_ids"].to(self.device), "attention_mask": tokens["attention_mask"].to(self.device)}

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "model": self.model_id,
            "model_class": f"transformers.{_SUPPORTED[self.model_type][0]}",
            "requested_revision": self.requested_revision,
            "revision": self.revision,
            "query_template": self.query_template,
            "query_max_tokens": self.max_query_tokens,
            "score": "sigmoid of the class logit per (box, query)",
            "candidates": f"per query: top {self.top_k} boxes, NMS IoU {self.nms_iou}; union over queries",
            "input_resolution": self.preprocess.size[0],
            "preprocessing": self.preprocess.describe(),
            "dtype": self.dtype,
        }
        if self.seed is not None:
            settings["seed"] = self.seed
        return settings


def _load(ref: ModelRef) -> tuple[Any, Any, Any, str | None]:
    """(model, image processor, tokenizer, revision) of an OWLv2 / OWL-ViT hub id or folder."""
    import transformers
    from transformers import AutoConfig, CLIPTokenizer

    source = model_source(ref)
    try:
        config = AutoConfig.from_pretrained(source, revision=ref.revision)
    except Exception as exc:  # a missing or unreadable model is a user-facing error
        raise load_error(ref, "its config", exc) from exc
    model_type = str(getattr(config, "model_type", ""))
    if model_type not in _SUPPORTED:
        raise RelbenchError(
            f"detector model {ref.id!r}: model type {model_type!r} is not supported; expected an OWLv2 or OWL-ViT checkpoint "
            f"(e.g. {DEFAULT_DETECTOR[0]})"
        )
    model_name, processor_name = _SUPPORTED[model_type]
    model = load_pretrained(getattr(transformers, model_name), ref, source)
    image_processor = load_component(getattr(transformers, processor_name), ref, source)
    tokenizer = load_component(CLIPTokenizer, ref, source)
    return model, image_processor, tokenizer, resolve_revision(model, source, ref.revision)


def _unpack_built(model: Any) -> tuple[Any, Any, Any]:
    """(model, Owlv2Processor) or (model, image_processor, tokenizer) -> the three parts."""
    if not isinstance(model, (tuple, list)) or len(model) not in (2, 3):
        raise TypeError("a built detector is passed as (model, Owlv2Processor) or (model, image_processor, tokenizer)")
    if len(model) == 3:
        return model[0], model[1], model[2]
    processor = model[1]
    return model[0], getattr(processor, "image_processor", processor), getattr(processor, "tokenizer", None)
