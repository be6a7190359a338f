"""Issue 13: ms per image of ms-diffusion and dreamrelation before/after one call's constants are
computed once (masked attention) and the relation LoRA is merged once per relation group.

    .venv/bin/python bench/layout_inference.py --threads 1          # tiny models, CPU

Both paths run in one process on the same models, alternating, median of ``--repeats``, so the
figures are ratios on the same machine. One batch of 4 requests (one relation), 2 or 3 subjects:

* ms-diffusion. Before: ``generate_with_layout(precompute=False)`` (masks and ``to_k_ip`` /
  ``to_v_ip`` of the image tokens rebuilt in every layer at every step; the unconditional half of
  the batch attended too); after: the default (``LayoutCache``, unconditional half skipped).
* dreamrelation. Before: the LoRA loaded as diffusers/peft LoRA layers (``load_lora_weights`` +
  ``set_adapters``, run unfused at every step) and ``precompute=False``; after: the method's path
  (``relation_group``: ``fused_lora`` merges it into the weights once, then the default).

Shapes (``--shapes``): the tiny profile (64 px, 2 steps: what ``bench/methods_tiny.py`` times), the
reference's 30 steps at 64 px, and 30 steps at 128 px (cross-attention over 32 x 32 positions in
the tiny UNet, as most of SDXL's cross-attention layers at 1024 px).
Also printed: the largest pixel difference (float images in [0, 1]) between the two paths.

``--sdxl-px PX`` (0: skip) adds one denoising step of the SDXL-sized UNet (public config, random
weights, tests/sdxl_shapes.py) with the public-size adapter, one image with guidance (batch 2:
zero-box unconditional half, 2 subjects), float32: before, the per-step path with a rank-4 relation
LoRA on peft layers; after, a ``LayoutCache`` (filled by the call's first step, which is not
counted) and the LoRA merged by ``fused_lora``. Seconds per step, median of ``--repeats`` x
``--sdxl-steps``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TWO = ((0.0, 0.2, 0.55, 0.85), (0.55, 0.26, 0.95, 0.90))
THREE = ((0.0, 0.2, 0.45, 0.85), (0.45, 0.2, 0.7, 0.85), (0.55, 0.25, 0.95, 0.9))


def write_lora(directory: Path) -> Path:
    """A tiny-UNet relation LoRA with non-zero up weights (an untrained one is the identity)."""
    import torch

    from relbench.methods.dreamrelation.lora import add_relation_lora, save_relation_lora
    from relbench.tiny import tiny_sdxl_components

    unet = tiny_sdxl_components(0)["unet"]
    add_relation_lora(unet, rank=4, alpha=4.0, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return save_relation_lora(unet, directory)


def call_arguments(subjects: int, size: int, steps: int, batch: int) -> dict[str, Any]:
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = [[Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(subjects)] for _ in range(batch)]
    return dict(
        prompts=["a dog is hugging a cat"] * batch, subject_images=photos, phrases=[["dog", "cat", "bear"][:subjects]] * batch,
        boxes=[list(TWO if subjects == 2 else THREE)] * batch, seeds=list(range(batch)), num_inference_steps=steps,
        guidance_scale=5.0, negative_prompt="monochrome, lowres", width=size, height=size, scale=0.6, output_type="np",
    )


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--shapes", default="64x2,64x30,128x30", help="comma-separated PIXELSxSTEPS")
    parser.add_argument("--sdxl-px", type=int, default=0, help="also time one SDXL-sized UNet step at this size")
    parser.add_argument("--sdxl-steps", type=int, default=3)
    args = parser.parse_args(argv)
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",") if shape]

    import torch

    from relbench.methods.dreamrelation.method import DreamRelation
    from relbench.methods.ms_diffusion.method import MSDiffusion
    from relbench.methods.ms_diffusion.pipeline import generate_with_layout
    from relbench.profiles import RunContext

    if args.threads:
        torch.set_num_threads(args.threads)
    context = RunContext(profile="tiny")
    with tempfile.TemporaryDirectory() as folder:
        lora = write_lora(Path(folder) / "lora")
        ms = MSDiffusion(context)
        settings = dataclasses.replace(DreamRelation.default_settings(context), loras=f"hug={lora}")
        fused = DreamRelation(context, settings)
        unfused = DreamRelation(context, settings)  # its pipe gets diffusers' LoRA layers
        unfused.pipe.load_lora_weights(str(lora), adapter_name="relation")
        unfused.pipe.set_adapters(["relation"], adapter_weights=[settings.lora_scale])

    def run_ms(kwargs: dict[str, Any], precompute: bool) -> list[Any]:
        return generate_with_layout(ms.pipe, ms.models.adapter, ms.models.encoder, precompute=precompute, **kwargs)

    def run_fused(kwargs: dict[str, Any]) -> list[Any]:
        with fused.relation_group("hug"):
            return generate_with_layout(fused.pipe, fused.models.adapter, fused.models.encoder, **kwargs)

    def run_unfused(kwargs: dict[str, Any]) -> list[Any]:
        return generate_with_layout(unfused.pipe, unfused.models.adapter, unfused.models.encoder, precompute=False, **kwargs)

    print(f"{platform.machine()} CPU, torch {torch.__version__}, threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f}, batch {args.batch}, median of {args.repeats}")
    print("| method | subjects | px | steps | ms/image before | after | speed-up | max |diff| |")
    print("|---|---|---|---|---|---|---|---|")
    for size, steps in shapes:
        for subjects in (2, 3):
            kwargs = call_arguments(subjects, size, steps, args.batch)
            pairs = {
                "ms-diffusion": (lambda: run_ms(kwargs, False), lambda: run_ms(kwargs, True)),
                "dreamrelation": (lambda: run_unfused(kwargs), lambda: run_fused(kwargs)),
            }
            for name, (before, after) in pairs.items():
                before(), after()  # warm-up
                times: dict[str, list[float]] = {"before": [], "after": []}
                outputs: dict[str, Any] = {}
                for _ in range(args.repeats):  # alternate, so that load from other jobs hits both alike
                    for label, run in (("before", before), ("after", after)):
                        began = time.perf_counter()
                        outputs[label] = run()
                        times[label].append(time.perf_counter() - began)
                old, new = (statistics.median(times[k]) / args.batch * 1000 for k in ("before", "after"))
                diff = float(np.abs(np.stack(outputs["before"]) - np.stack(outputs["after"])).max())
                print(f"| {name} | {subjects} | {size} | {steps} | {old:.1f} | {new:.1f} | {old / new:.2f}x | {diff:.1e} |")
                sys.stdout.flush()
    if args.sdxl_px:
        sdxl_unet_step(args.sdxl_px, args.sdxl_steps, args.repeats)


def sdxl_unet_step(px: int, steps: int, repeats: int) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from relbench.methods.dreamrelation.lora import LoRAFactors, add_relation_lora, fused_lora, lora_state_dict
    from relbench.methods.ms_diffusion.adapter import MSAdapter
    from relbench.methods.ms_diffusion.attention import LayoutCache
    from relbench.methods.ms_diffusion.config import MSAdapterConfig
    from relbench.tiny import seeded

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from sdxl_shapes import SDXL_UNET_CONFIG

    config = MSAdapterConfig.sdxl()
    with seeded(0), torch.no_grad():
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).eval().requires_grad_(False)
        adapter = MSAdapter(config, unet).requires_grad_(False)
        adapter.install(unet)
        add_relation_lora(unet, seed=0)
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
        unet.requires_grad_(False)
        latents = torch.randn(2, 4, px // 8, px // 8)
        image = torch.cat([torch.zeros(1, config.context_tokens(2) - config.text_tokens, 2048),
                           torch.randn(1, config.context_tokens(2) - config.text_tokens, 2048)])
        context = torch.cat([torch.randn(2, config.text_tokens, 2048), image], dim=1)
        added = {"text_embeds": torch.randn(2, 1280), "time_ids": torch.tensor([[float(px), px, 0, 0, px, px]] * 2)}
    boxes = torch.tensor([[[0.0] * 4] * 2, list(TWO)])
    state = lora_state_dict(unet)
    factors = {
        key[len("unet."):-len(".lora.down.weight")]: LoRAFactors(down=value, up=state[key.replace("lora.down", "lora.up")], scaling=1.0)
        for key, value in state.items() if key.endswith(".lora.down.weight")
    }

    def call(cache: LayoutCache | None) -> tuple[float, Any]:
        kwargs = adapter.cross_attention_kwargs(boxes, scale=0.6, latent_size=(px // 8, px // 8), cache=cache)
        began = time.perf_counter()
        with torch.no_grad():
            out = unet(latents, 500, context, added_cond_kwargs=added, cross_attention_kwargs=kwargs).sample
        return time.perf_counter() - began, out

    def before() -> tuple[list[float], Any]:
        unet.enable_adapters()  # peft's LoRA layers run at every step
        results = [call(None) for _ in range(steps)]
        return [t for t, _ in results], results[-1][1]

    def after() -> tuple[list[float], Any]:
        unet.disable_adapters()  # the wrappers pass through to the merged base layers
        cache = LayoutCache()
        with fused_lora(unet, factors, 1.0):
            call(cache)  # the first step of a call fills the cache
            results = [call(cache) for _ in range(steps)]
        cache.clear()
        return [t for t, _ in results], results[-1][1]

    before(), after()  # warm-up
    times: dict[str, list[float]] = {"before": [], "after": []}
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for label, run in (("before", before), ("after", after)):
            seconds, outputs[label] = run()
            times[label] += seconds
    old, new = statistics.median(times["before"]), statistics.median(times["after"])
    diff = float((outputs["before"] - outputs["after"]).abs().max())
    print(f"SDXL-sized UNet, {px} px, batch 2 (one image with guidance), 2 subjects, float32: {old:.2f} s/step before, "
          f"{new:.2f} s/step after, {old / new:.2f}x; largest |difference| of the noise prediction {diff:.1e}")


if __name__ == "__main__":
    main()
