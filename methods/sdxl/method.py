"""``sdxl``: SDXL text-to-image from the prompt alone, the no-customization control.

It sees the prompt and nothing else (no reference images, no boxes), so its identity scores show
what the class nouns alone give. Sampling settings follow DreamRelation's inference recipe (Euler,
30 steps, guidance 5.0, its negative prompt) so that the control differs from DreamRelation only in
the customization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError, exception_line
from relbench.method import GUIDANCE, STEPS, GenerationRequest, Method, bounded
from relbench.methods.sdxl.meta import INFO
from relbench.profiles import RunContext, pipeline_revision, torch_dtype

if TYPE_CHECKING:
    from PIL import Image

DREAMRELATION_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"


@dataclass(frozen=True)
class SDXLSettings:
    # Denoising steps of the Euler sampler (DreamRelation inference: 30).
    num_inference_steps: int = bounded(30, *STEPS)
    # Classifier-free guidance scale (DreamRelation inference: 5.0).
    guidance_scale: float = bounded(5.0, *GUIDANCE)
    # Negative prompt for the unconditional branch (DreamRelation inference's).
    negative_prompt: str = DREAMRELATION_NEGATIVE_PROMPT
    # Weights dtype: float16 on GPU as the authors ran it; float32 on CPU.
    dtype: str = "float16"
    # Weight files variant to load ("fp16" halves the download of the hub model); "" for none.
    variant: str = "fp16"


class SDXL(Method):
    info = INFO
    settings_cls = SDXLSettings
    model_keys = ("sdxl",)
    batch_size = 4

    @classmethod
    def default_settings(cls, context: RunContext) -> SDXLSettings:
        if context.is_tiny:
            # Random tiny weights: two steps show the whole loop runs; more would measure nothing.
            return SDXLSettings(num_inference_steps=2, dtype="float32", variant="")
        if context.torch_device().type == "cpu":
            return SDXLSettings(dtype="float32", variant="")
        return SDXLSettings()

    def __init__(self, context: RunContext, settings: SDXLSettings | None = None):
        super().__init__(context, settings)
        self.model_ref = context.model("sdxl")
        self.device = context.torch_device()
        self.pipe = self._load()

    def _load(self) -> Any:
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        dtype = torch_dtype(self.config.dtype)
        if self.model_ref.is_tiny:
            from relbench.tiny import tiny_sdxl_components

            pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(self.context.seed), add_watermarker=False)
            self.resolved_revision = None
        else:
            from relbench.models_manifest import fix_hint, require_cached_ref

            require_cached_ref("sdxl", self.model_ref.id, self.model_ref.revision, {"variant": self.config.variant})
            try:
                pipe = StableDiffusionXLPipeline.from_pretrained(
                    self.model_ref.id, revision=self.model_ref.revision, dtype=dtype,
                    variant=self.config.variant or None, use_safetensors=True, add_watermarker=False,
                )
            except (OSError, ValueError) as exc:
                raise RelbenchError(
                    f"cannot load SDXL from {self.model_ref.id!r} ({exception_line(exc)}); "
                    f"{fix_hint('sdxl', self.model_ref.id)} (and --set sdxl.variant= if it has no fp16 files)"
                ) from exc
            self.resolved_revision = pipeline_revision(pipe)
            pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        if self.model_ref.is_tiny and dtype != next(pipe.unet.parameters()).dtype:
            pipe = pipe.to(dtype=dtype)  # tiny weights are built in float32
        return pipe.to(self.device)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "model": {**self.model_ref.describe(), "resolved_revision": self.resolved_revision},
            "scheduler": type(self.pipe.scheduler).__name__,
        }

    def generate(self, requests: Sequence[GenerationRequest]) -> list["Image.Image"]:
        import torch

        for request in requests:
            self.check_request(request)
        sizes = {(r.width, r.height) for r in requests}
        if len(sizes) != 1:
            raise RelbenchError("sdxl: all requests of a batch must have the same size")
        width, height = sizes.pop()
        # One generator per request: an image depends on its own seed, not on its batch mates.
        generators = [torch.Generator(device=self.device).manual_seed(r.seed) for r in requests]
        output = self.pipe(
            prompt=[r.prompt for r in requests],
            negative_prompt=[self.config.negative_prompt] * len(requests),
            num_inference_steps=self.config.num_inference_steps,
            guidance_scale=self.config.guidance_scale,
            width=width, height=height, generator=generators, output_type="pil",
        )
        return list(output.images)

