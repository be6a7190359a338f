"""Subject encoders of MS-Diffusion: reference images -> image tokens, subject phrases -> embeddings.

As the authors run it:

* Images: each reference image is converted to RGB and resized to 512 x 512 (bicubic), then
  preprocessed by a default ``CLIPImageProcessor`` (shortest edge 224 bicubic, centre crop 224,
  OpenAI CLIP mean/std) and encoded by ``CLIPVisionModelWithProjection`` from
  ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``; the tokens used are the *penultimate* hidden
  states (``hidden_states[-2]``, before the final layer and without post-LayerNorm): 257 tokens
  (CLS + 16 x 16 patches) of width 1664.
* Phrases: each subject phrase (e.g. "dog") is tokenised by SDXL's first tokenizer (padded to 77)
  and encoded by SDXL's first text encoder (CLIP ViT-L/14 text tower); the embedding is its pooled
  output (the end-of-text token's final state), width 768.

Both encoders are frozen: encoding runs without gradients.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from relbench.errors import RelbenchError
from relbench.tiny import seeded

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_IMAGE_ENCODER = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
PRE_RESIZE = 512  # the authors resize every reference image to 512 x 512 before the CLIP processor


def tiny_image_encoder(seed: int = 0) -> tuple[Any, Any]:
    """(CLIPVisionModelWithProjection, CLIPImageProcessor): 32 px, 32 wide, 17 tokens (CLS + 4x4)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4, projection_dim=32, hidden_act="gelu")
    with seeded(seed):
        model = CLIPVisionModelWithProjection(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, processor


class SubjectEncoder:
    """Image encoder + phrase encoder, loaded once and shared by every generation."""

    def __init__(self, image_encoder: nn.Module, image_processor: Any, text_encoder: nn.Module, tokenizer: Any, *,
                 pre_resize: int = PRE_RESIZE, source: str | None = None):
        self.image_encoder = image_encoder.eval()
        self.image_processor = image_processor
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.pre_resize = pre_resize
        self.source = source  # the image encoder's hub id or path, for provenance

    @classmethod
    def from_pretrained(cls, pipe: Any, image_encoder: str | Path | nn.Module = DEFAULT_IMAGE_ENCODER, *,
                        revision: str | None = None, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> "SubjectEncoder":
        """CLIP ViT-bigG/14 (hub id, local folder, or a built module) + the pipeline's CLIP-L text encoder.

        ``dtype`` / ``device`` default to the pipeline UNet's.
        """
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        unet_parameter = next(pipe.unet.parameters())
        dtype = dtype or unet_parameter.dtype
        device = device or unet_parameter.device
        if isinstance(image_encoder, nn.Module):
            model, source = image_encoder, getattr(getattr(image_encoder, "config", None), "_name_or_path", None)
        else:
            source = str(image_encoder)
            try:
                model = CLIPVisionModelWithProjection.from_pretrained(source, revision=revision, dtype=dtype)
            except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: weights of the wrong shape
                from relbench.errors import exception_line
                from relbench.models_manifest import fix_hint

                raise RelbenchError(
                    f"cannot load the MS-Diffusion image encoder from {source!r} ({exception_line(exc)}); "
                    f"{fix_hint('image_encoder', source)}"
                ) from exc
        # The authors build CLIPImageProcessor() with its defaults rather than reading the repo's file.
        return cls(model.to(device=device, dtype=dtype), CLIPImageProcessor(), pipe.text_encoder, pipe.tokenizer, source=source)

    @classmethod
    def tiny(cls, pipe: Any, seed: int = 0) -> "SubjectEncoder":
        """The tiny image encoder (seeded) + the tiny pipeline's text encoder and offline CLIP tokenizer."""
        from relbench.tiny import clip_tokenizer

        model, processor = tiny_image_encoder(seed)
        parameter = next(pipe.unet.parameters())
        model = model.to(device=parameter.device, dtype=parameter.dtype)
        return cls(model, processor, pipe.text_encoder, clip_tokenizer(), source="tiny:ms-image-encoder")

    @staticmethod
    def _counts(items: list[list[Any]], what: str) -> tuple[int, int]:
        if not items or any(len(row) == 0 for row in items):
            raise RelbenchError(f"MS-Diffusion: {what}: every prompt needs at least one subject")
        counts = {len(row) for row in items}
        if len(counts) != 1:
            raise RelbenchError(f"MS-Diffusion: {what}: all prompts of a batch must have the same number of subjects, got {sorted(counts)}")
        return len(items), counts.pop()

    @torch.no_grad()
    def encode_images(self, images: "list[list[Image.Image]]") -> Tensor:
        """Reference images per prompt and subject -> (B, N, L, image width) penultimate CLIP tokens."""
        from PIL import Image

        b, n = self._counts(images, "subject images")
        flat = [img.convert("RGB").resize((self.pre_resize, self.pre_resize), Image.Resampling.BICUBIC) for row in images for img in row]
        parameter = next(self.image_encoder.parameters())
        pixels = self.image_processor(images=flat, return_tensors="pt").pixel_values
        out = self.image_encoder(pixel_values=pixels.to(device=parameter.device, dtype=parameter.dtype), output_hidden_states=True)
        tokens = out.hidden_states[-2]  # (B*N, L, E)
        return tokens.reshape(b, n, tokens.shape[1], tokens.shape[2])

    @torch.no_grad()
    def encode_phrases(self, phrases: list[list[str]]) -> Tensor:
        """Subject phrases per prompt -> (B, N, text width) pooled text embeddings."""
        b, n = self._counts(phrases, "phrases")
        flat = [phrase for row in phrases for phrase in row]
        ids = self.tokenizer(flat, max_length=self.tokenizer.model_max_length, padding="max_length", truncation=True,
                             return_tensors="pt").input_ids
        device = next(self.text_encoder.parameters()).device
        pooled = self.text_encoder(ids.to(device)).pooler_output  # (B*N, P)
        return pooled.reshape(b, n, -1)
