"""``ip-adapter``: SDXL + IP-Adapter Plus, one reference image per subject, masked to its layout box.

Each subject gives one reference image (the (seed mod number of references)-th, as in
ms-diffusion, so several seeds show several references) to the same IP-Adapter, and diffusers'
IP-Adapter masking restricts that image's attention output to the subject's box: a binary mask per
subject, built at the output size, preprocessed by ``IPAdapterMaskProcessor`` and passed as
``cross_attention_kwargs={"ip_adapter_masks": [...]}`` (diffusers' multi-subject recipe). The
prompt is the case's prompt; nothing else knows about the relation.

Weights: ``h94/IP-Adapter`` ``sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors`` with the ViT-H
image encoder of ``models/image_encoder``. Of the authors' SDXL adapters the Plus one (16 tokens
resampled from the encoder's patch features instead of 4 from its global embedding) is the one
they describe as closest to the reference image, which is what subject customization needs; the plain ``ip-adapter_sdxl*`` and the
face model can be chosen with ``--set ip-adapter.weight_name=...`` (and ``image_encoder_subfolder``
for the bigG one). Sampling follows the authors' ``IPAdapterXL.generate``: 30 steps, their
negative prompt, SDXL's default Euler sampler and guidance 5.0.

One pipeline call serves every request of a ``generate`` call with the same number of subjects and
size, whatever their cases and seeds: each prompt gets its own image embeddings, its own masks
(``ip_adapter_masks`` of shape (2 x batch, subjects, H, W), which diffusers' processor uses row by
row when it has one row per sample) and its own generator; an image does not depend on what else
is in the batch (up to float rounding of batched kernels). diffusers 0.42's SDXL pipeline tiles
``ip_adapter_image_embeds`` by the number of prompts (one set of images for all of them), so the
pipeline's ``prepare_ip_adapter_image_embeds`` is replaced on this instance by one that takes the
embeddings as given, one row per sample (``per_sample_ip_embeds``).

The tiny profile builds the tiny SDXL, a tiny CLIP vision encoder and a random IP-Adapter Plus
state dict in the authors' key layout, loaded through the same ``load_ip_adapter`` call.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError
from relbench.method import GUIDANCE, STEPS, GenerationRequest, Method, bounded
from relbench.methods.ip_adapter.meta import INFO
from relbench.profiles import RunContext, hub_commit, pipeline_revision, torch_dtype

if TYPE_CHECKING:
    import torch
    from PIL import Image

NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"


@dataclass(frozen=True)
class IPAdapterSettings:
    # Weight of each subject's image attention (diffusers' multi-subject masking example: 0.7; the
    # authors advise about 0.5 for text + image prompts, 1.0 for an image alone).
    scale: float = bounded(0.7, 0, 10)
    # Denoising steps (authors' IPAdapterXL.generate default: 30).
    num_inference_steps: int = bounded(30, *STEPS)
    # Classifier-free guidance scale (SDXL pipeline default, used by the authors' SDXL demo: 5.0).
    guidance_scale: float = bounded(5.0, *GUIDANCE)
    # Negative prompt (authors' IPAdapterXL default).
    negative_prompt: str = NEGATIVE_PROMPT
    # Folder of the adapter weights inside the ip_adapter model (h94/IP-Adapter layout).
    subfolder: str = "sdxl_models"
    # Adapter weight file: Plus with ViT-H patch features (see the module docstring).
    weight_name: str = "ip-adapter-plus_sdxl_vit-h.safetensors"
    # Image encoder folder inside the ip_adapter model: ViT-H for the *_vit-h adapters.
    image_encoder_subfolder: str = "models/image_encoder"
    # Weights dtype: float16 on GPU as the authors ran it; float32 on CPU.
    dtype: str = "float16"
    # SDXL weight files variant ("fp16" halves the download); "" for none.
    variant: str = "fp16"


class IPAdapter(Method):
    info = INFO
    settings_cls = IPAdapterSettings
    model_keys = ("sdxl", "ip_adapter")
    batch_size = 4

    @classmethod
    def default_settings(cls, context: RunContext) -> IPAdapterSettings:
        if context.is_tiny:
            # Random tiny weights: two steps show the whole loop runs; more would measure nothing.
            return IPAdapterSettings(num_inference_steps=2, dtype="float32", variant="")
        if context.torch_device().type == "cpu":
            return IPAdapterSettings(dtype="float32", variant="")
        return IPAdapterSettings()

    def __init__(self, context: RunContext, settings: IPAdapterSettings | None = None):
        super().__init__(context, settings)
        self.sdxl_ref = context.model("sdxl")
        self.adapter_ref = context.model("ip_adapter")
        self.device = context.torch_device()
        self.resolved_revisions: dict[str, str | None] = {}
        self.pipe = self._load()

    def _load(self) -> Any:
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        dtype = torch_dtype(self.config.dtype)
        if self.adapter_ref.is_tiny:
            encoder, processor = tiny_image_encoder(self.context.seed)
        elif self.sdxl_ref.is_tiny:
            raise RelbenchError("--model ip_adapter: a pretrained IP-Adapter needs the pretrained SDXL; pass --model sdxl too")
        else:
            from relbench.models_manifest import require_cached_ref

            require_cached_ref("sdxl", self.sdxl_ref.id, self.sdxl_ref.revision, {"variant": self.config.variant})
            require_cached_ref("ip_adapter", self.adapter_ref.id, self.adapter_ref.revision, {
                "subfolder": self.config.subfolder, "weight_name": self.config.weight_name,
                "image_encoder_subfolder": self.config.image_encoder_subfolder,
            })
            encoder, processor = self._load_full_encoder(dtype)
        if self.sdxl_ref.is_tiny:
            from relbench.tiny import tiny_sdxl_components

            pipe = StableDiffusionXLPipeline(
                **tiny_sdxl_components(self.context.seed), image_encoder=encoder, feature_extractor=processor,
                add_watermarker=False,
            )
        else:
            try:
                pipe = StableDiffusionXLPipeline.from_pretrained(
                    self.sdxl_ref.id, revision=self.sdxl_ref.revision, dtype=dtype,
                    variant=self.config.variant or None, use_safetensors=True, add_watermarker=False,
                    image_encoder=encoder, feature_extractor=processor,
                )
            except (OSError, ValueError) as exc:
                raise RelbenchError(
                    f"cannot load SDXL from {self.sdxl_ref.id!r} ({_short(exc)}); download it first or pass "
                    f"--model sdxl=/local/path (and --set ip-adapter.variant= if it has no fp16 files)"
                ) from exc
            self.resolved_revisions["sdxl"] = pipeline_revision(pipe)
            # SDXL base's own sampler, which the authors' demo keeps; explicit for other SDXL folders.
            pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        if self.adapter_ref.is_tiny:
            state_dict = tiny_ip_adapter_state_dict(pipe.unet, encoder.config.hidden_size, self.context.seed)
            pipe.load_ip_adapter(state_dict, subfolder="", weight_name="", image_encoder_folder=None)
        else:
            self._load_full_adapter(pipe)
        pipe.set_ip_adapter_scale(self.config.scale)
        # Embeddings per sample (one row per prompt), not one set tiled over the prompts: see the module docstring.
        pipe.prepare_ip_adapter_image_embeds = types.MethodType(per_sample_ip_embeds, pipe)
        pipe.set_progress_bar_config(disable=True)
        if dtype != next(pipe.unet.parameters()).dtype:
            pipe = pipe.to(dtype=dtype)  # tiny weights are built in float32
        return pipe.to(self.device)

    def _load_full_encoder(self, dtype: "torch.dtype") -> tuple[Any, Any]:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        ref = self.adapter_ref
        try:
            encoder = CLIPVisionModelWithProjection.from_pretrained(
                ref.id, subfolder=self.config.image_encoder_subfolder, revision=ref.revision, dtype=dtype,
            )
        except (OSError, ValueError) as exc:
            raise RelbenchError(
                f"cannot load the IP-Adapter image encoder from {ref.id!r} subfolder "
                f"{self.config.image_encoder_subfolder!r} ({_short(exc)}); download it first or pass "
                f"--model ip_adapter=/local/path"
            ) from exc
        # The authors' CLIPImageProcessor() (shortest side resized, centre crop) at the encoder's
        # input size: 224 px for ViT-H, as diffusers' load_ip_adapter also builds it.
        size = encoder.config.image_size
        return encoder, CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def _load_full_adapter(self, pipe: Any) -> None:
        ref = self.adapter_ref
        try:
            pipe.load_ip_adapter(
                ref.id, subfolder=self.config.subfolder, weight_name=self.config.weight_name,
                image_encoder_folder=None, revision=ref.revision,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise RelbenchError(
                f"cannot load IP-Adapter {self.config.subfolder}/{self.config.weight_name} from {ref.id!r} "
                f"({_short(exc)}); download it first or pass --model ip_adapter=/local/path"
            ) from exc
        self.resolved_revisions["ip_adapter"] = hub_commit(ref.id, f"{self.config.subfolder}/{self.config.weight_name}", ref.revision)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "models": {
                "sdxl": {**self.sdxl_ref.describe(), "resolved_revision": self.resolved_revisions.get("sdxl")},
                "ip_adapter": {**self.adapter_ref.describe(), "resolved_revision": self.resolved_revisions.get("ip_adapter")},
            },
            "scheduler": type(self.pipe.scheduler).__name__,
            "image_projection": type(self.pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__,
        }

    def check_request(self, request: GenerationRequest) -> None:
        super().check_request(request)
        for subject in request.subjects:
            x0, y0, x1, y1 = _pixel_box(subject.box, request.width, request.height)
            if x1 <= x0 or y1 <= y0:
                raise RelbenchError(
                    f"case {request.case_id}: subject {subject.id!r} has an empty layout box {tuple(subject.box)} "
                    f"at {request.width}x{request.height}; ip-adapter masks each subject to its box"
                )

    def generate(self, requests: Sequence[GenerationRequest]) -> list["Image.Image"]:
        for request in requests:
            self.check_request(request)
        images: dict[int, "Image.Image"] = {}
        # Embeddings and masks are per prompt, so one call mixes cases and seeds; only their tensor
        # shapes must agree: the number of subjects and the output size.
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((len(r.subjects), r.width, r.height), []).append(i)
        for indices in groups.values():
            out = self._generate_batch([requests[i] for i in indices])
            images.update(zip(indices, out))
        return [images[i] for i in range(len(requests))]

    def _generate_batch(self, batch: list[GenerationRequest]) -> list["Image.Image"]:
        """Images for requests with the same number of subjects and size, in one pipeline call."""
        import torch
        from diffusers.models.embeddings import ImageProjection

        pipe, first = self.pipe, batch[0]
        count = len(first.subjects)
        # Plus adapters read the encoder's penultimate patch features, the plain ones its image embedding.
        hidden_states = not isinstance(pipe.unet.encoder_hid_proj.image_projection_layers[0], ImageProjection)
        # Each subject's (seed mod references)-th image; all of the batch's through the encoder at once.
        references = [s.images[r.seed % len(s.images)] for r in batch for s in r.subjects]
        with torch.no_grad():
            positive, negative = pipe.encode_image(references, self.device, 1, hidden_states)
        # (batch, subjects, ...); the unconditional rows first when the pipeline guides (its own
        # condition: guidance_scale > 1), the order of its prompt embeddings.
        embeds = positive.reshape(len(batch), count, *positive.shape[1:])
        masks = torch.stack([subject_masks([s.box for s in r.subjects], r.width, r.height) for r in batch])  # (batch, subjects, H, W)
        if self.config.guidance_scale > 1.0:
            embeds = torch.cat([negative.reshape(embeds.shape), embeds])
            masks = torch.cat([masks, masks])
        output = pipe(
            prompt=[r.prompt for r in batch],
            negative_prompt=self.config.negative_prompt,  # one string: the pipeline repeats it per prompt
            ip_adapter_image_embeds=[embeds],
            cross_attention_kwargs={"ip_adapter_masks": [masks.to(self.device)]},
            num_inference_steps=self.config.num_inference_steps,
            guidance_scale=self.config.guidance_scale,
            width=first.width, height=first.height, output_type="pil",
            generator=[torch.Generator(device=self.device).manual_seed(r.seed) for r in batch],
        )
        return list(output.images)


def per_sample_ip_embeds(pipe: Any, ip_adapter_image: Any, ip_adapter_image_embeds: list["torch.Tensor"], device: Any,
                         num_images_per_prompt: int, do_classifier_free_guidance: bool) -> list["torch.Tensor"]:
    """``prepare_ip_adapter_image_embeds`` for embeddings given per sample: (rows, subjects, ...) with
    rows = 2 x samples under guidance (unconditional first) or the samples, used as they are (the
    pipeline passes its number of samples as ``num_images_per_prompt``)."""
    rows = num_images_per_prompt * (2 if do_classifier_free_guidance else 1)
    for embeds in ip_adapter_image_embeds:
        if embeds.shape[0] != rows:
            raise ValueError(f"ip_adapter_image_embeds: expected {rows} rows (one per sample), got {embeds.shape[0]}")
    return [embeds.to(device) for embeds in ip_adapter_image_embeds]


def _pixel_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)


def subject_masks(boxes: Sequence[Sequence[float]], width: int, height: int) -> "torch.Tensor":
    """One binary mask per box at the output size, shaped (subjects, height, width) as
    ``IPAdapterMaskProcessor`` leaves them (1 inside the box, 0 outside)."""
    from diffusers.image_processor import IPAdapterMaskProcessor
    from PIL import Image

    masks = []
    for box in boxes:
        mask = Image.new("L", (width, height), 0)
        mask.paste(255, _pixel_box(box, width, height))
        masks.append(mask)
    processed = IPAdapterMaskProcessor().preprocess(masks, height=height, width=width)  # (n, 1, H, W)
    return processed[:, 0]


def tiny_image_encoder(seed: int = 0) -> tuple[Any, Any]:
    """(CLIPVisionModelWithProjection, CLIPImageProcessor): a 32 px, 32-wide ViT with random weights."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from relbench.tiny import seeded

    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4, projection_dim=32, hidden_act="gelu")
    with seeded(seed + 1):  # a stream of its own, apart from the tiny SDXL's
        model = CLIPVisionModelWithProjection(config).eval()
    return model, CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def tiny_ip_adapter_state_dict(unet: Any, embed_dims: int, seed: int = 0, num_queries: int = 16,
                               hidden_dims: int = 32, heads: int = 1, depth: int = 4) -> dict[str, dict[str, "torch.Tensor"]]:
    """A random IP-Adapter Plus in the authors' file layout, sized for ``unet``.

    ``image_proj`` is their Resampler (latents, proj_in, ``depth`` blocks of perceiver attention
    with 64-wide heads and a 4x feed-forward, proj_out, norm_out); ``ip_adapter`` holds
    ``to_k_ip`` / ``to_v_ip`` for every cross-attention layer, numbered 1, 3, 5, ... in the order
    of ``unet.attn_processors`` (the odd numbers: the authors count self- and cross-attention).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        return torch.randn(out_features, in_features, generator=generator) / in_features**0.5

    cross_dim = unet.config.cross_attention_dim
    inner, ff_inner = heads * 64, hidden_dims * 4
    proj: dict[str, torch.Tensor] = {
        "latents": torch.randn(1, num_queries, hidden_dims, generator=generator) / hidden_dims**0.5,
        "proj_in.weight": linear(hidden_dims, embed_dims), "proj_in.bias": torch.zeros(hidden_dims),
        "proj_out.weight": linear(cross_dim, hidden_dims), "proj_out.bias": torch.zeros(cross_dim),
        "norm_out.weight": torch.ones(cross_dim), "norm_out.bias": torch.zeros(cross_dim),
    }
    for i in range(depth):
        block = f"layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            proj[f"{block}{norm}.weight"] = torch.ones(hidden_dims)
            proj[f"{block}{norm}.bias"] = torch.zeros(hidden_dims)
        proj[f"{block}0.to_q.weight"] = linear(inner, hidden_dims)
        proj[f"{block}0.to_kv.weight"] = linear(2 * inner, hidden_dims)
        proj[f"{block}0.to_out.weight"] = linear(hidden_dims, inner)
        proj[f"{block}1.1.weight"] = linear(ff_inner, hidden_dims)
        proj[f"{block}1.3.weight"] = linear(hidden_dims, ff_inner)

    ip: dict[str, torch.Tensor] = {}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden_size = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        ip[f"{key_id}.to_k_ip.weight"] = linear(hidden_size, cross_dim)
        ip[f"{key_id}.to_v_ip.weight"] = linear(hidden_size, cross_dim)
        key_id += 2
    return {"image_proj": proj, "ip_adapter": ip}


def _short(exc: BaseException) -> str:
    from relbench.errors import exception_line

    return exception_line(exc)
