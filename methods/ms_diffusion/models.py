"""Loading the layout models once: SDXL parts, the MS-Diffusion adapter, the subject encoder (ms-diffusion, dreamrelation).

``tiny`` builds every part from configs with seeded random weights (the tiny SDXL of
``relbench.tiny``, ``MSAdapterConfig.tiny()``, the tiny subject encoder), so that training and
inference in the tiny profile see the same frozen weights. ``full`` loads pretrained weights:
SDXL by hub id or local folder (``--model sdxl=...``), the public ``ms_adapter.bin``
(``--model ms_adapter=...``) and CLIP ViT-bigG/14 (``--model image_encoder=...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError
from relbench.profiles import ModelRef, RunContext, hub_commit, resolved_revision, torch_dtype

if TYPE_CHECKING:
    from relbench.methods.ms_diffusion.adapter import MSAdapter
    from relbench.methods.ms_diffusion.encoders import SubjectEncoder

# The models DreamRelation (and MS-Diffusion) load; defaults in relbench.profiles.FULL_MODELS.
MODEL_KEYS = ("sdxl", "ms_adapter", "image_encoder")


@dataclass
class LayoutModels:
    vae: Any
    unet: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    scheduler_config: dict[str, Any]
    adapter: "MSAdapter"
    encoder: "SubjectEncoder"
    refs: dict[str, ModelRef]
    revisions: dict[str, str | None]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def describe(self) -> dict[str, Any]:
        return {key: {**ref.describe(), "resolved_revision": self.revisions.get(key)} for key, ref in self.refs.items()}


def model_refs(context: RunContext) -> dict[str, ModelRef]:
    """The weights each part comes from in this profile (overrides included)."""
    return {key: context.model(key) for key in MODEL_KEYS}


def load_models(context: RunContext, dtype: str = "float32", variant: str | None = None, vae_float32: bool = False,
                local_features: bool = False) -> LayoutModels:
    """Every frozen part, on the context's device in ``dtype`` (the LoRA is added by the caller).

    ``vae_float32`` keeps the VAE in float32 (training encodes with it once; SDXL's VAE overflows
    in float16). For generation the pipeline upcasts the VAE itself when it needs to.
    ``local_features`` adds DreamRelation's 16 dense local tokens per subject to the encoder's
    output (``local_features.LocalFeatureEncoder``); the resampler must have been trained on them.
    """
    from relbench.methods.ms_diffusion.adapter import MSAdapter
    from relbench.methods.ms_diffusion.config import MSAdapterConfig
    from relbench.methods.ms_diffusion.encoders import SubjectEncoder

    refs = model_refs(context)
    device = context.torch_device()
    weight_dtype = torch_dtype(dtype)
    revisions: dict[str, str | None] = {}
    if refs["sdxl"].is_tiny:
        from relbench.tiny import SDXL_SCHEDULER_CONFIG, tiny_sdxl_components

        parts = tiny_sdxl_components(context.seed)
        scheduler_config = dict(SDXL_SCHEDULER_CONFIG)
    else:
        parts, scheduler_config, revisions["sdxl"] = _load_sdxl_parts(refs["sdxl"], weight_dtype, variant)
    for name in ("vae", "unet", "text_encoder", "text_encoder_2"):
        parts[name].requires_grad_(False)
        target = torch_dtype("float32") if name == "vae" and vae_float32 else weight_dtype
        module = parts[name]
        # Cast only when needed: diffusers warns on every dtype cast through .to().
        module.to(device=device) if next(module.parameters()).dtype == target else module.to(device=device, dtype=target)
    config = MSAdapterConfig.tiny() if refs["ms_adapter"].is_tiny else MSAdapterConfig.sdxl()
    if refs["ms_adapter"].is_tiny:
        from relbench.tiny import seeded

        with seeded(context.seed + 1):
            adapter = MSAdapter(config, parts["unet"])
        adapter.to(device=device, dtype=weight_dtype)
    else:
        from relbench.models_manifest import require_cached_ref

        require_cached_ref("ms_adapter", refs["ms_adapter"].id, refs["ms_adapter"].revision)
        # Sizes read from the file (the public one gives MSAdapterConfig.sdxl()).
        adapter = MSAdapter.from_pretrained(refs["ms_adapter"].id, None, parts["unet"], revision=refs["ms_adapter"].revision)
        revisions["ms_adapter"] = (getattr(adapter, "loaded_from", None) or {}).get("resolved_revision")
    adapter.requires_grad_(False)
    adapter.install(parts["unet"])
    holder = SimpleNamespace(unet=parts["unet"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"])
    if refs["image_encoder"].is_tiny:
        encoder = SubjectEncoder.tiny(holder, seed=context.seed + 2)
    else:
        from relbench.models_manifest import require_cached_ref

        require_cached_ref("image_encoder", refs["image_encoder"].id, refs["image_encoder"].revision)
        encoder = SubjectEncoder.from_pretrained(holder, refs["image_encoder"].id, revision=refs["image_encoder"].revision)
        revisions["image_encoder"] = (resolved_revision(getattr(encoder.image_encoder.config, "_name_or_path", None))
                                      or hub_commit(refs["image_encoder"].id, "config.json", refs["image_encoder"].revision))
    if local_features:
        from relbench.methods.ms_diffusion.local_features import MODEL_KEY, TINY_ID, LocalFeatureEncoder, dense_encoder_for

        encoder = LocalFeatureEncoder(encoder, dense_encoder_for(context, device=device, dtype=weight_dtype))
        refs[MODEL_KEY] = context.model(MODEL_KEY, tiny_id=TINY_ID)
    return LayoutModels(
        vae=parts["vae"], unet=parts["unet"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
        tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer_2"], scheduler_config=scheduler_config,
        adapter=adapter, encoder=encoder, refs=refs, revisions=revisions,
    )


def _load_sdxl_parts(ref: ModelRef, dtype: Any, variant: str | None) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from relbench.errors import exception_line
    from relbench.models_manifest import fix_hint, require_cached_ref

    require_cached_ref("sdxl", ref.id, ref.revision, {"variant": variant or ""})
    common = {"revision": ref.revision}
    try:
        parts = {
            "tokenizer": CLIPTokenizer.from_pretrained(ref.id, subfolder="tokenizer", **common),
            "tokenizer_2": CLIPTokenizer.from_pretrained(ref.id, subfolder="tokenizer_2", **common),
            "text_encoder": CLIPTextModel.from_pretrained(ref.id, subfolder="text_encoder", dtype=dtype, variant=variant, **common),
            "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(ref.id, subfolder="text_encoder_2", dtype=dtype, variant=variant, **common),
            "vae": AutoencoderKL.from_pretrained(ref.id, subfolder="vae", variant=variant, **common),
            "unet": UNet2DConditionModel.from_pretrained(ref.id, subfolder="unet", dtype=dtype, variant=variant, **common),
        }
        scheduler = DDPMScheduler.from_pretrained(ref.id, subfolder="scheduler", **common)
    except (OSError, ValueError) as exc:
        raise RelbenchError(
            f"cannot load SDXL from {ref.id!r} ({exception_line(exc)}); {fix_hint('sdxl', ref.id)} "
            f"(and no fp16 variant if the folder has none)"
        ) from exc
    # Loaded by hub id, the modules' _name_or_path is the id: the commit comes from the cache.
    commit = resolved_revision(getattr(parts["unet"].config, "_name_or_path", None)) or hub_commit(ref.id, "unet/config.json", ref.revision)
    return parts, dict(scheduler.config), commit
