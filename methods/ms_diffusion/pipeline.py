"""Layout-conditioned SDXL generation with the MS-Diffusion adapter.

As the authors generate (``MSAdapter.generate``): the prompt and negative prompt go through
``pipe.encode_prompt``; the conditional context is the text embeddings followed by the adapter's
image context (dummy tokens, then 16 tokens per subject); the unconditional context is the negative
text embeddings followed by zeros of the same length, and its boxes are all zero, so every position
is background and the image branch adds nothing to it. The boxes travel to the attention processors
through ``cross_attention_kwargs`` (the pipeline puts the unconditional half first). Reference
inference: Euler, 30 steps, guidance 5.0, scale 0.6 (DreamRelation's settings).

Here the latent size is passed as well, so that non-square images get correct layer grids, and
each prompt gets its own ``torch.Generator`` so that an image depends only on its own seed. The
masks and the projected image tokens, the same at every step, are computed once per call (a
``LayoutCache`` made for the call and cleared after it).
"""

from __future__ import annotations

from numbers import Real
from typing import TYPE_CHECKING, Any

import torch

from relbench.errors import RelbenchError
from relbench.methods.ms_diffusion.adapter import MSAdapter
from relbench.methods.ms_diffusion.attention import LayoutCache
from relbench.methods.ms_diffusion.encoders import SubjectEncoder

if TYPE_CHECKING:
    from PIL import Image


def check_boxes(boxes: list[list[tuple[float, float, float, float]]]) -> None:
    """Every box is normalised xyxy with a positive area."""
    for i, row in enumerate(boxes):
        for j, box in enumerate(row):
            values = tuple(box)
            ok = len(values) == 4 and all(isinstance(v, Real) for v in values)
            if ok:
                x0, y0, x1, y1 = values
                ok = 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
            if not ok:
                raise RelbenchError(f"boxes[{i}][{j}]: expected normalised xyxy with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {list(values)}")


def generate_with_layout(pipe: Any, adapter: MSAdapter, encoder: SubjectEncoder, *,
                         prompts: list[str], subject_images: "list[list[Image.Image]]", phrases: list[list[str]],
                         boxes: list[list[tuple[float, float, float, float]]], seeds: list[int],
                         num_inference_steps: int, guidance_scale: float, negative_prompt: str,
                         width: int, height: int, scale: float,
                         subject_masks: "list[list[Image.Image | None]] | None" = None,
                         output_type: str = "pil", precompute: bool = True) -> list[Any]:
    """One image per prompt: subject i's reference images and phrase placed in box i.

    ``output_type`` is diffusers' (``"np"``: float arrays in [0, 1]). ``precompute=False`` rebuilds
    the masks and image projections at every step (the same numbers; kept to compare against)."""
    batch = len(prompts)
    lengths = {"subject_images": len(subject_images), "phrases": len(phrases), "boxes": len(boxes), "seeds": len(seeds)}
    for name, length in lengths.items():
        if length != batch:
            raise RelbenchError(f"MS-Diffusion: {name} has {length} entries for {batch} prompts")
    counts = {len(row) for rows in (subject_images, phrases, boxes) for row in rows}
    if len(counts) != 1:
        raise RelbenchError(
            "MS-Diffusion: every prompt of a batch needs the same number of subjects, with one image, phrase and box each; "
            f"got subject counts {sorted(counts)}"
        )
    if counts == {0}:
        raise RelbenchError("MS-Diffusion: every prompt needs at least one subject")
    check_boxes(boxes)
    if not adapter.is_installed(pipe.unet):
        adapter.install(pipe.unet)

    unet_parameter = next(pipe.unet.parameters())
    device, dtype = unet_parameter.device, unet_parameter.dtype
    box_tensor = torch.tensor(boxes, dtype=torch.float32, device=device)  # (B, N, 4)
    cfg = guidance_scale > 1.0
    with torch.no_grad():
        if hasattr(encoder, "local_tokens"):  # local features: each subject's extent in its own reference image
            from relbench.methods.ms_diffusion.local_features import subject_boxes

            image_embeds = encoder.encode(subject_images, subject_boxes(subject_images, subject_masks))
        else:
            image_embeds = encoder.encode_images(subject_images)
        image_embeds = image_embeds.to(device=device, dtype=dtype)  # (B, N, L, E)
        phrase_embeds = encoder.encode_phrases(phrases).to(device=device, dtype=dtype)  # (B, N, P)
        context = adapter.image_context(image_embeds, phrase_embeds, box_tensor).to(dtype)  # (B, D + N*Q, C)
        prompt_embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt=list(prompts), device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=[negative_prompt] * batch if cfg else None,
        )
    prompt_embeds = torch.cat([prompt_embeds, context], dim=1)  # (B, 77 + D + N*Q, C)
    if cfg:
        negative_embeds = torch.cat([negative_embeds, torch.zeros_like(context)], dim=1)
        # The pipeline runs [unconditional; conditional]: zero boxes make the first half all background.
        box_tensor = torch.cat([torch.zeros_like(box_tensor), box_tensor], dim=0)
    latent_size = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
    cache = LayoutCache() if precompute else None
    try:
        output = pipe(
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds if cfg else None,
            pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled if cfg else None,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, width=width, height=height,
            generator=generators, output_type=output_type,
            cross_attention_kwargs=adapter.cross_attention_kwargs(box_tensor, scale=scale, latent_size=latent_size, cache=cache),
        )
    finally:
        if cache is not None:
            cache.clear()  # the pipeline keeps this call's cross_attention_kwargs: free the tensors now
    return list(output.images)
