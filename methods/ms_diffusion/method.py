"""``ms-diffusion``: zero-shot SDXL + the MS-Diffusion adapter, with layout boxes and phrases.

The direct ablation of DreamRelation: the same frozen model and inference recipe, no relation
LoRA. Each subject shows one reference image, the (seed mod number of references)-th, so several
seeds use several references; its phrase is its class noun; its box is the case's layout box.
Inference follows the authors: Euler, 30 steps, guidance 5.0, DreamRelation's negative prompt,
adapter scale 0.6; the unconditional branch gets zero image embeddings and zero boxes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relbench.method import GUIDANCE, STEPS, GenerationRequest, Method, bounded
from relbench.methods.ms_diffusion.meta import INFO
from relbench.profiles import RunContext

if TYPE_CHECKING:
    from PIL import Image

NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"


@dataclass(frozen=True)
class MSDiffusionSettings:
    # Denoising steps of the Euler sampler (authors' inference: 30).
    num_inference_steps: int = bounded(30, *STEPS)
    # Classifier-free guidance scale (authors' inference: 5.0).
    guidance_scale: float = bounded(5.0, *GUIDANCE)
    # Negative prompt for the unconditional branch (DreamRelation's inference).
    negative_prompt: str = NEGATIVE_PROMPT
    # Weight of the adapter's image attention (authors' default: 0.6).
    scale: float = bounded(0.6, 0, 10)
    # Weights dtype: float16 on GPU as the authors ran it; float32 on CPU.
    dtype: str = "float16"
    # SDXL weight files variant ("fp16" halves the download); "" for none.
    variant: str = "fp16"


class MSDiffusion(Method):
    info = INFO
    settings_cls = MSDiffusionSettings
    model_keys = ("sdxl", "ms_adapter", "image_encoder")
    max_subjects = 3  # the authors' layouts cover two or three subjects
    batch_size = 4

    @classmethod
    def default_settings(cls, context: RunContext) -> Any:
        base = cls.settings_cls()
        if context.is_tiny:
            return _replace(base, num_inference_steps=2, dtype="float32", variant="")
        if context.torch_device().type == "cpu":
            return _replace(base, dtype="float32", variant="")
        return base

    def __init__(self, context: RunContext, settings: Any = None):
        super().__init__(context, settings)
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        from relbench.methods.ms_diffusion.models import load_models

        self.models = load_models(context, dtype=self.config.dtype, variant=self.config.variant or None,
                                  local_features=bool(getattr(self.config, "local_features", False)))
        m = self.models
        self.pipe = StableDiffusionXLPipeline(
            vae=m.vae, text_encoder=m.text_encoder, text_encoder_2=m.text_encoder_2, tokenizer=m.tokenizer,
            tokenizer_2=m.tokenizer_2, unet=m.unet, scheduler=EulerDiscreteScheduler.from_config(m.scheduler_config),
            add_watermarker=False,
        )
        self.pipe.set_progress_bar_config(disable=True)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "models": self.models.describe(), "scheduler": type(self.pipe.scheduler).__name__}

    @contextmanager
    def relation_group(self, relation: str | None) -> Iterator[None]:
        """Around each group of requests that share a relation (DreamRelation fuses its LoRA here)."""
        yield

    def generate(self, requests: Sequence[GenerationRequest]) -> list["Image.Image"]:
        from relbench.methods.ms_diffusion.pipeline import generate_with_layout

        for request in requests:
            self.check_request(request)
        images: dict[int, "Image.Image"] = {}
        # Per relation (one relation_group: DreamRelation's LoRA fused once), one pipeline call per
        # (number of subjects, size): the context length depends on N.
        groups: dict[str | None, dict[tuple[int, int, int], list[int]]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.relation_id, {}).setdefault((len(r.subjects), r.width, r.height), []).append(i)
        for relation, shapes in groups.items():
            with self.relation_group(relation):
                for (_, width, height), indices in shapes.items():
                    batch = [requests[i] for i in indices]
                    out = generate_with_layout(
                        self.pipe, self.models.adapter, self.models.encoder,
                        prompts=[r.prompt for r in batch],
                        subject_images=[[s.images[r.seed % len(s.images)] for s in r.subjects] for r in batch],
                        phrases=[[s.class_noun for s in r.subjects] for r in batch],
                        boxes=[[s.box for s in r.subjects] for r in batch],
                        seeds=[r.seed for r in batch],
                        num_inference_steps=self.config.num_inference_steps, guidance_scale=self.config.guidance_scale,
                        negative_prompt=self.config.negative_prompt, width=width, height=height, scale=self.config.scale,
                        subject_masks=[[s.masks[r.seed % len(s.masks)] if s.masks else None for s in r.subjects] for r in batch],
                    )
                    images.update(zip(indices, out))
        return [images[i] for i in range(len(requests))]


def _replace(settings: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(settings, **changes)
