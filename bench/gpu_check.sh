#!/usr/bin/env bash
# relbench GPU measurement plan: one script, one GPU, no network, random weights at real shapes.
#
# One GPU (sized for one H100 80 GB), the repository checked out with its .venv, NO network: every
# model is built with random weights at its real shape (SDXL UNet/VAE/text encoders, CLIP ViT-bigG/14,
# MS-Diffusion adapter, CLIP ViT-L/14, DINO ViT-S/16, OWLv2 B/16 @960, ViTPose++ B, Qwen2.5-VL-7B),
# as bench/ does with --sdxl-shapes / --full-shapes. Whole run <= BUDGET_S (default 450 s) plus start-up.
#
#   bash bench/gpu_check.sh [REPO_DIR]      # REPO_DIR defaults to the current directory
#   GPU_CHECK_TINY=1 bash gpu_check.sh .    # dry run with tiny models (any CPU, ~1-2 min)
#   GPU_CHECK_COMPILE=1 ...                 # also time torch.compile of the UNet (+1-2 min)
#
# Measures (1024 px unless noted):
#   gen          UNet denoising step (CFG) and s/image through relbench's own SDXL.generate /
#                MSDiffusion.generate at batch 1 and 4 (10 steps timed, 30 extrapolated), peak memory;
#                variants: bf16, channels_last, DreamRelation LoRA unfused vs merged, VAE decode fp32
#                upcast (what the pipeline does) vs fp16/bf16, VAE slicing.
#   train_gc     bench/train_step.py --sdxl-shapes bf16 + gradient checkpointing: DreamRelation
#   train_nogc   step time and peak memory, cached vs per-step encoding (same, without checkpointing).
#   metrics_*    bench/metrics_throughput.py --full-shapes on 1024 px images: img/s batched vs one at a
#                time, float32 (relbench's default), bfloat16, float32 with TF32 matmuls.
#   judge        LocalVLMJudge at Qwen2.5-VL-7B shapes: s/image for 7 questions as run today vs the
#                image + chat prefix encoded once and each question run on its KV cache (and their diff).
#   finetune     dreambooth-lora training micro-step (rank-4 LoRA, fp16) -> minutes per subject set,
#                GPU-hours for RelationBench's 120 subject sets (with and without gradient checkpointing).
#   syncs        host-device synchronisations per ms-diffusion generate() and per DreamRelation step.
# Prints one table at the end (OUT/summary.txt); logs in OUT (default /tmp/relbench-gpu-check.*).
# Stages run in order of importance; each has a time limit and the last ones are skipped if the budget runs out.
set -u
REPO=$(cd "${1:-.}" && pwd)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=python3; fi
BUDGET_S=${BUDGET_S:-450}          # whole script, seconds (stay under 8 minutes)
TINY=${GPU_CHECK_TINY:-0}          # 1: tiny models, tiny settings (a CPU dry run of this script)
OUT=${OUT:-$(mktemp -d /tmp/relbench-gpu-check.XXXXXX)}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
       TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# caches the bench scripts write go to a scratch folder, never the user's
export XDG_CACHE_HOME="$OUT/cache" RELBENCH_EMBEDDING_CACHE="$OUT/cache/embeddings"
STAGES="$OUT/stages"; mkdir -p "$STAGES"
cd "$REPO"
cat > "$STAGES/stage_common.py" <<'PY_COMMON_EOF'
"""What every stage script shares: the device, its RESULT lines, a GPU sync."""
import torch

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
cuda = dev.type == "cuda"


def emit(key, value, unit=""):
    """One 'RESULT<TAB>key<TAB>value<TAB>unit' line (floats to 4 significant digits) for summary.py."""
    print(f"RESULT\t{key}\t{value:.4g}\t{unit}" if isinstance(value, float) else f"RESULT\t{key}\t{value}\t{unit}", flush=True)


def sync():
    if cuda:
        torch.cuda.synchronize()
PY_COMMON_EOF
cat > "$STAGES/gen.py" <<'PY_GEN_EOF'
"""Stage gen: SDXL-shaped denoising through relbench's own generate() code (sdxl and ms-diffusion
paths), random weights, no download. Prints 'RESULT<TAB>key<TAB>value<TAB>unit' lines.

  python gen.py                  # SDXL shapes at 1024 px on the GPU (the measurement)
  python gen.py --tiny --res 64  # tiny models: checks the code path anywhere (CPU)
"""
import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace

p = argparse.ArgumentParser()
p.add_argument("--tiny", action="store_true")
p.add_argument("--res", type=int, default=1024)
p.add_argument("--steps", type=int, default=10, help="denoising steps per pipeline call (30-step figures are extrapolated)")
p.add_argument("--reps", type=int, default=2)
p.add_argument("--compile", action="store_true", help="also time torch.compile(unet) (adds ~1-2 min of compile)")
p.add_argument("--all-variants", action="store_true", help="run the GPU-only variants on the CPU too (code-path check)")
args = p.parse_args()

import torch

from stage_common import cuda, dev, emit, sync  # written beside the stages by gpu_check.sh
variants = cuda or args.all_variants
if cuda:
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's default, stated: the repo sets nothing
FP16 = torch.float16 if cuda else torch.float32


def timed(fn, reps):
    fn()  # warm-up
    sync()
    out = []
    for _ in range(reps):
        b = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - b)
    return statistics.median(out)


def peak_reset():
    if cuda:
        torch.cuda.reset_peak_memory_stats()


def peak():
    return torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")


began = time.perf_counter()
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from PIL import Image
from transformers import CLIPImageProcessor

from relbench.method import GenerationRequest, SubjectInput
from relbench.methods.ms_diffusion.adapter import MSAdapter
from relbench.methods.ms_diffusion.config import MSAdapterConfig
from relbench.methods.ms_diffusion.encoders import SubjectEncoder
from relbench.methods.ms_diffusion.method import MSDiffusion, MSDiffusionSettings
from relbench.methods.sdxl.method import SDXL, SDXLSettings
from relbench.tiny import SDXL_SCHEDULER_CONFIG, seeded

if args.tiny:
    from relbench.methods.ms_diffusion.encoders import tiny_image_encoder
    from relbench.tiny import tiny_sdxl_components

    parts = tiny_sdxl_components(0)
    image_encoder, _ = tiny_image_encoder(0)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ms_config = MSAdapterConfig.tiny()
else:
    from relbench.sdxl_shapes import bigg_image_encoder, sdxl_components

    parts = sdxl_components(str(dev))
    image_encoder, processor, ms_config = bigg_image_encoder(str(dev)), CLIPImageProcessor(), MSAdapterConfig.sdxl()
# As relbench's loaders leave them on a GPU: every part in float16, the VAE too (the pipeline
# upcasts it to float32 for decoding because the SDXL VAE config has force_upcast=True).
for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
    parts[name].to(device=dev, dtype=FP16).requires_grad_(False).eval()
unet = parts["unet"]
pipe = StableDiffusionXLPipeline(
    vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"], tokenizer=parts["tokenizer"],
    tokenizer_2=parts["tokenizer_2"], unet=unet, scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
    add_watermarker=False,
)
pipe.set_progress_bar_config(disable=True)
emit("gen/build_s", time.perf_counter() - began, "s")

R = args.res
photo = Image.new("RGB", (512, 512), (150, 110, 70))
subjects = (SubjectInput("dog", "dog", (photo,), (0.0, 0.2, 0.55, 0.85)), SubjectInput("bear", "stuffed animal", (photo,), (0.55, 0.26, 0.95, 0.9)))


def requests(n):
    return [GenerationRequest(f"case{i}", "a dog is hugging a stuffed animal", "hugging", subjects, i, R, R, "hug") for i in range(n)]


# --- the UNet alone: one denoising step (CFG: batch 2B) --------------------------------------
lat = R // 8
add_time = torch.tensor([[R, R, 0, 0, R, R]], device=dev, dtype=FP16)
pooled_dim = parts["text_encoder_2"].config.projection_dim
ctx_dim = unet.config.cross_attention_dim


def unet_step_fn(batch, tokens, kwargs=None):
    x = torch.randn(batch, 4, lat, lat, device=dev, dtype=unet.dtype)
    ctx = torch.randn(batch, tokens, ctx_dim, device=dev, dtype=unet.dtype)
    added = {"text_embeds": torch.randn(batch, pooled_dim, device=dev, dtype=unet.dtype), "time_ids": add_time.to(unet.dtype).expand(batch, -1)}
    t = torch.tensor([500] * batch, device=dev)

    def run():
        with torch.inference_mode():
            unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added, cross_attention_kwargs=kwargs)
    return run


reps_unet = max(3, args.reps * 2)
for b in (1, 4):
    emit(f"unet_step/sdxl/fp16/B{b}", timed(unet_step_fn(2 * b, 77), reps_unet), "s (CFG batch %d)" % (2 * b))

# dtype / memory format variants of the plain SDXL UNet (B=4, CFG batch 8)
if variants:
    unet.to(dtype=torch.bfloat16)
    emit("unet_step/sdxl/bf16/B4", timed(unet_step_fn(8, 77), reps_unet), "s")
    unet.to(dtype=FP16)
    unet.to(memory_format=torch.channels_last)
    emit("unet_step/sdxl/fp16+channels_last/B4", timed(unet_step_fn(8, 77), reps_unet), "s")
    unet.to(memory_format=torch.contiguous_format)

# --- the sdxl method's generate() --------------------------------------------------------------
sdxl = SDXL.__new__(SDXL)
sdxl.config, sdxl.device, sdxl.pipe, sdxl.context = SDXLSettings(num_inference_steps=args.steps, dtype="float16" if cuda else "float32", variant=""), dev, pipe, None
for b in (1, 4):
    peak_reset()
    s = timed(lambda: sdxl.generate(requests(b)), args.reps)
    emit(f"pipeline/sdxl/B{b}/{args.steps}steps", s / b, "s/image")
    emit(f"pipeline/sdxl/B{b}/peak_GiB", peak(), "GiB")

# --- VAE decode of 4 latents: the pipeline's float32 upcast vs staying in half precision -------
vae = parts["vae"]
z = torch.randn(4, 4, lat, lat, device=dev)


def decode(dtype):
    def run():
        with torch.inference_mode():
            vae.to(dtype=dtype)
            vae.decode(z.to(dtype) / vae.config.scaling_factor)
    return run


emit("vae_decode/fp32_upcast(current)/4img", timed(decode(torch.float32), args.reps) / 4, "s/image")
if variants:
    emit("vae_decode/fp16/4img", timed(decode(torch.float16), args.reps) / 4, "s/image")
    emit("vae_decode/bf16/4img", timed(decode(torch.bfloat16), args.reps) / 4, "s/image")
    peak_reset()
    vae.to(dtype=torch.float32)
    vae.enable_slicing()
    s = timed(decode(torch.float32), 1)
    emit("vae_decode/fp32+slicing/4img", s / 4, "s/image")
    emit("vae_decode/fp32+slicing/peak_GiB", peak(), "GiB")
    vae.disable_slicing()
vae.to(dtype=FP16)

# --- the ms-diffusion method's generate() (the dreamrelation path without LoRA) ----------------
with seeded(1):
    adapter = MSAdapter(ms_config, unet).to(device=dev, dtype=FP16).requires_grad_(False)
adapter.install(unet)
encoder = SubjectEncoder(image_encoder.to(device=dev, dtype=FP16), processor, parts["text_encoder"], parts["tokenizer"])
ms = MSDiffusion.__new__(MSDiffusion)
ms.config = MSDiffusionSettings(num_inference_steps=args.steps, dtype="float16" if cuda else "float32", variant="")
ms.models, ms.pipe, ms.context = SimpleNamespace(adapter=adapter, encoder=encoder), pipe, None
ms_tokens = 77 + ms_config.num_dummy_tokens + 2 * ms_config.num_queries


def ms_kwargs(batch):
    boxes = torch.tensor([[[0.0, 0.2, 0.55, 0.85], [0.55, 0.26, 0.95, 0.9]]], device=dev).expand(batch, -1, -1)
    return adapter.cross_attention_kwargs(boxes, scale=0.6, latent_size=(lat, lat))


for b in (1, 4):
    emit(f"unet_step/ms-diffusion/fp16/B{b}", timed(unet_step_fn(2 * b, ms_tokens, ms_kwargs(2 * b)), reps_unet), "s (CFG batch %d)" % (2 * b))
for b in (1, 4):
    peak_reset()
    s = timed(lambda: ms.generate(requests(b)), args.reps)
    emit(f"pipeline/ms-diffusion/B{b}/{args.steps}steps", s / b, "s/image")
    emit(f"pipeline/ms-diffusion/B{b}/peak_GiB", peak(), "GiB")

# --- dreamrelation: the same + a rank-4 relation LoRA on attn2 (peft, unfused as loaded) vs merged
from peft.tuners.tuners_utils import BaseTunerLayer

from relbench.methods.dreamrelation.lora import add_relation_lora

add_relation_lora(unet, seed=0)
unet.requires_grad_(False)
unet.to(dtype=FP16)
emit("unet_step/dreamrelation(lora unfused)/fp16/B4", timed(unet_step_fn(8, ms_tokens, ms_kwargs(8)), reps_unet), "s")
for module in unet.modules():
    if isinstance(module, BaseTunerLayer):
        module.merge()
emit("unet_step/dreamrelation(lora merged)/fp16/B4", timed(unet_step_fn(8, ms_tokens, ms_kwargs(8)), reps_unet), "s")

if args.compile and variants:
    b = time.perf_counter()
    unet.compile()  # nn.Module.compile: in place, default mode
    fn = unet_step_fn(8, ms_tokens, ms_kwargs(8))
    fn()
    sync()
    emit("compile/first_call_s", time.perf_counter() - b, "s")
    emit("unet_step/dreamrelation(merged)+compile/fp16/B4", timed(fn, reps_unet), "s")
    unet._compiled_call_impl = None
emit("gen/total_s", time.perf_counter() - began, "s")
PY_GEN_EOF
cat > "$STAGES/judge.py" <<'PY_JUDGE_EOF'
"""Stage judge: the relation judge as relbench runs it (LocalVLMJudge.first_token_logits: one
forward per (image, question), the image re-encoded each time) vs a prototype that encodes the image
and the chat prefix once and then runs only each question's tokens on a copy of the KV cache.

  python judge.py            # Qwen2.5-VL-7B shapes (random weights, bf16) with 1024 px images, GPU
  python judge.py --tiny     # the tiny VLM: checks the code path and that both give the same logits

The tokenizer is relbench's offline tiny one (15k tokens instead of Qwen's 152k: only the size of
the embedding and LM-head matrices differ; logits are kept for the last position only).
Per image: 7 questions as on RelationBench (relation + 2 presence yes/no, 4 MC rotations).
"""
import argparse
import statistics
import time

p = argparse.ArgumentParser()
p.add_argument("--tiny", action="store_true")
p.add_argument("--images", type=int, default=2)
p.add_argument("--size", type=int, default=1024)
args = p.parse_args()

import numpy as np
import torch
from PIL import Image

from relbench.metrics.relation_judge import templates
from relbench.metrics.relation_judge.local import TINY_CHAT_TEMPLATE, LocalVLMJudge, tiny_vlm, tiny_vlm_tokenizer
from relbench.profiles import RunContext

from stage_common import cuda, dev, emit, sync  # written beside the stages by gpu_check.sh


began = time.perf_counter()
if args.tiny:
    model, processor = tiny_vlm(0)
else:
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tokenizer = tiny_vlm_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    # Qwen/Qwen2.5-VL-7B-Instruct config.json shapes
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                           hidden_act="silu"),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.device(dev):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    # Qwen2.5-VL's preprocessor_config.json pixel bounds: a 1024 px image -> 1036 px, 5476 patches, 1369 tokens
    pixels = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=TINY_CHAT_TEMPLATE)
judge = LocalVLMJudge(RunContext(profile="tiny" if args.tiny else "full", device=str(dev)), model=(model, processor))
model = judge.model
emit("judge/build_s", time.perf_counter() - began, "s")
emit("judge/attn_implementation", str(getattr(model.config, "_attn_implementation", "?")))

rng = np.random.default_rng(0)
images = [Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)) for _ in range(args.images)]
nouns, phrases = ("dog", "stuffed animal"), ["hugging", "carrying", "next to", "on top of"]
questions = [templates.relation_question(nouns, "hugging"), *(templates.presence_question(n) for n in nouns)]
questions += [templates.choice_question(nouns, phrases[i:] + phrases[:i]) for i in range(4)]  # 4 rotations
Q = len(questions)
pairs_images = [img for img in images for _ in questions]
pairs_questions = [q for _ in images for q in questions]

# --- as relbench does it --------------------------------------------------------------------
judge.first_token_logits(pairs_images[:2], pairs_questions[:2])  # warm-up
sync()
b = time.perf_counter()
reference = judge.first_token_logits(pairs_images, pairs_questions)
sync()
current = (time.perf_counter() - b) / len(images)
emit("judge/current/per_image", current, f"s ({Q} forwards of image+question, batch {judge.batch_size})")
inputs = processor(text=[judge.prompt(questions[0])], images=[[images[0]]], return_tensors="pt")
emit("judge/tokens/prompt", int(inputs["input_ids"].shape[1]), "tokens (image + question 0)")

# --- the vision tower alone --------------------------------------------------------------
pv = inputs["pixel_values"].to(dev, model.dtype)
grid = inputs["image_grid_thw"].to(dev)
with torch.inference_mode():
    model.model.get_image_features(pv, grid)
    sync()
    b = time.perf_counter()
    for _ in range(2):
        model.model.get_image_features(pv, grid)
    sync()
emit("judge/vision_tower/per_image", (time.perf_counter() - b) / 2, "s")


# --- prototype: image + chat prefix once, then each question's tokens on the cached prefix -------
def prefix_length(ids):
    end = processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    return int((ids[0] == end).nonzero()[-1]) + 1


def with_prefix_cache(image):
    encoded = [processor(text=[judge.prompt(q)], images=[[image]], return_tensors="pt") for q in questions]
    P = prefix_length(encoded[0]["input_ids"])
    for e in encoded:
        assert torch.equal(e["input_ids"][:, :P], encoded[0]["input_ids"][:, :P]), "prefix differs between questions"
    first = {k: (v.to(dev, model.dtype) if v.is_floating_point() else v.to(dev)) for k, v in encoded[0].items()}
    prefix = {k: (v[:, :P] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v) for k, v in first.items()}
    out = []
    with torch.inference_mode():
        first_out = model(**prefix, use_cache=True, logits_to_keep=1)
        cache = getattr(first_out, "past_key_values", None) or getattr(first_out, "cache")
        deltas = model.model.rope_deltas
        for e in encoded:
            ids = e["input_ids"][:, P:].to(dev)
            L = ids.shape[1]
            extra = cache.get_seq_length() - P
            if extra > 0:
                cache.crop(-extra)  # transformers 5: crop(-n) removes the last n tokens
            positions = torch.arange(P, P + L, device=dev).view(1, 1, -1).expand(3, 1, -1) + deltas.to(dev).view(1, -1, 1)
            logits = model(input_ids=ids, cache=cache, position_ids=positions, cache_position=torch.arange(P, P + L, device=dev),
                           use_cache=True, logits_to_keep=1).logits
            out.append(logits[:, -1].float().cpu())
    return torch.cat(out), P


with_prefix_cache(images[0])  # warm-up
sync()
b = time.perf_counter()
prototype = torch.cat([with_prefix_cache(img)[0] for img in images])
sync()
reuse = (time.perf_counter() - b) / len(images)
emit("judge/prefix_reuse/per_image", reuse, f"s (1 prefix forward + {Q} question-only forwards)")
emit("judge/prefix_reuse/speedup", current / reuse, "x")
p_ref, p_new = reference.softmax(-1), prototype.softmax(-1)
emit("judge/prefix_reuse/max_abs_diff_prob", float((p_ref - p_new).abs().max()), "(probability, any vocab entry)")
emit("judge/prefix_reuse/max_abs_diff_logit", float((reference - prototype).abs().max()), "(logit)")
if cuda:
    emit("judge/peak_GiB", torch.cuda.max_memory_allocated() / 2**30, "GiB")
emit("judge/total_s", time.perf_counter() - began, "s")
PY_JUDGE_EOF
cat > "$STAGES/finetune.py" <<'PY_FINETUNE_EOF'
"""Stage finetune: one dreambooth-lora training micro-step at 1024 px on the SDXL-shaped UNet
(random weights), as relbench's trainer runs it: frozen fp16 weights, rank-4 LoRA on
to_q/to_k/to_v/to_out.0 (methods/dreambooth_lora/train.py add_lora), fp16 autocast, batch 1,
latents and prompt embeddings already cached. With the trainer's defaults a 2-subject set is
2 x 500 optimizer steps x 4 micro-steps = 4000 micro-steps, and RelationBench has 120 subject sets.

  python finetune.py            # GPU, SDXL shapes
  python finetune.py --tiny     # code-path check (CPU)
"""
import argparse
import statistics
import time

p = argparse.ArgumentParser()
p.add_argument("--tiny", action="store_true")
p.add_argument("--res", type=int, default=1024)
p.add_argument("--steps", type=int, default=6)
args = p.parse_args()

import torch
import torch.nn.functional as F

from stage_common import cuda, dev, emit, sync  # written beside the stages by gpu_check.sh


from relbench.methods.dreambooth_lora.train import add_lora

if args.tiny:
    from relbench.tiny import tiny_sdxl_components

    unet = tiny_sdxl_components(0)["unet"].to(dev)
else:
    from relbench.sdxl_shapes import sdxl_unet

    unet = sdxl_unet(str(dev))
weight_dtype = torch.float16 if cuda else torch.float32
unet.to(dtype=weight_dtype).requires_grad_(False)
params = add_lora(unet, rank=4, seed=0)  # trainable LoRA in float32
unet.train()
optimizer = torch.optim.AdamW(params, lr=1e-4)
lat = args.res // 8
ctx = unet.config.cross_attention_dim
pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim  # SDXL: 2816 - 1536 = 1280
time_ids = torch.tensor([[args.res, args.res, 0, 0, args.res, args.res]], device=dev, dtype=weight_dtype)


def micro_step(update: bool) -> None:
    latents = torch.randn(1, 4, lat, lat, device=dev)
    noise = torch.randn_like(latents)
    t = torch.randint(0, 1000, (1,), device=dev)
    embeds = torch.randn(1, 77, ctx, device=dev, dtype=weight_dtype)
    pooled = torch.randn(1, pooled_dim, device=dev, dtype=weight_dtype)
    with torch.autocast(dev.type, dtype=torch.float16, enabled=cuda):
        pred = unet((latents + noise).to(weight_dtype), t, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    F.mse_loss(pred.float(), noise).backward()
    if update:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


for gc in (False, True):
    if gc:
        unet.enable_gradient_checkpointing()
    for i in range(2):
        micro_step(True)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for i in range(args.steps):
        b = time.perf_counter()
        micro_step(i % 4 == 3)
        sync()
        seconds.append(time.perf_counter() - b)
    s = statistics.median(seconds)
    tag = "gradient checkpointing" if gc else "no checkpointing (trainer default)"
    emit(f"finetune/dreambooth-lora micro-step/{tag}", s, "s")
    emit(f"finetune/dreambooth-lora per subject set (4000 micro-steps)/{tag}", s * 4000 / 60, "min")
    emit(f"finetune/dreambooth-lora RelationBench (120 sets)/{tag}", s * 4000 * 120 / 3600, "GPU-h")
    if cuda:
        emit(f"finetune/peak_GiB/{tag}", torch.cuda.max_memory_allocated() / 2**30, "GiB")
PY_FINETUNE_EOF
cat > "$STAGES/syncs.py" <<'PY_SYNCS_EOF'
"""Stage syncs: host-device synchronisations per call, counted with torch.cuda.set_sync_debug_mode
(tiny models on the GPU: the count does not depend on model size). On a CPU it only checks the
code path (counts are 0 there)."""
import os
import sys
import time
import warnings

repo = sys.argv[1] if len(sys.argv) > 1 else "."
sys.path.insert(0, os.path.join(repo, "bench"))
import torch

from stage_common import cuda, dev, emit, sync  # written beside the stages by gpu_check.sh


def count_syncs(fn, label, calls=1):
    if cuda:
        torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(calls):
                fn()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    n = sum(1 for w in caught if "synchroniz" in str(w.message).lower())
    where = {}
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            key = f"{os.path.basename(w.filename)}:{w.lineno}"
            where[key] = where.get(key, 0) + 1
    emit(f"syncs/{label}", f"{n / calls:g}" if cuda else "n/a (CPU)", "per call; top: " + ", ".join(f"{k} x{v / calls:g}" for k, v in sorted(where.items(), key=lambda kv: -kv[1])[:4]))


# Calibration: one .item() must count as one synchronisation, else the counts below mean nothing.
probe = torch.ones(1, device=dev)
count_syncs(lambda: probe.sum().item(), "calibration: one .item() (expect 1)")

from types import SimpleNamespace

import train_step as ts  # bench/train_step.py
from diffusers import DDPMScheduler

from relbench.methods.dreamrelation import train
from relbench.methods.dreamrelation.lora import add_relation_lora
from relbench.methods.dreamrelation.losses import DreamRelationLoss
from relbench.methods.ms_diffusion.attention import AttentionStore
from relbench.methods.ms_diffusion.pipeline import generate_with_layout

args = SimpleNamespace(sdxl_shapes=False, profile="tiny")
dtype = torch.float32
models = ts.build_models(args, dev, dtype)
R = 64
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from PIL import Image

pipe = StableDiffusionXLPipeline(vae=models.vae, text_encoder=models.text_encoder, text_encoder_2=models.text_encoder_2,
                                 tokenizer=models.tokenizer, tokenizer_2=models.tokenizer_2, unet=models.unet,
                                 scheduler=EulerDiscreteScheduler.from_config(models.scheduler_config), add_watermarker=False)
pipe.set_progress_bar_config(disable=True)
photo = Image.new("RGB", (64, 64), (150, 110, 70))


def ms_call():
    generate_with_layout(pipe, models.adapter, models.encoder, prompts=["a dog hugging a bear"] * 2, subject_images=[[photo, photo]] * 2,
                         phrases=[["dog", "bear"]] * 2, boxes=[[(0.0, 0.2, 0.55, 0.85), (0.55, 0.26, 0.95, 0.9)]] * 2, seeds=[0, 1],
                         num_inference_steps=5, guidance_scale=5.0, negative_prompt="low quality", width=R, height=R, scale=0.6)


ms_call()  # warm-up
count_syncs(ms_call, "ms-diffusion generate (5 steps, batch 2)")

trainable = add_relation_lora(models.unet, seed=0)
optimizer = torch.optim.AdamW(trainable, lr=1e-4)
step_args = SimpleNamespace(train_batch_size=1, scale=0.6, kml_max_timestep=333)
alphas = DDPMScheduler.from_config(models.scheduler_config).alphas_cumprod.to(dev)
store = AttentionStore(max_queries=train.coarsest_cross_attention_queries(models.unet, R // models.vae_scale_factor))
weights = DreamRelationLoss()
cache = ts.synthetic_cache(models, R, dev, dtype)
index = [0]


def train_micro_step():
    generator = train.step_generator(0, index[0], 0, dev)
    index[0] += 1
    loss, logs = train.training_step(models, models.unet, models.adapter.image_proj, cache, weights, store, generator, step_args, alphas)  # SDXL time ids come from the cache, per image
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


train_micro_step()
count_syncs(train_micro_step, "dreamrelation training_step+backward+clip+AdamW", calls=3)
PY_SYNCS_EOF
cat > "$STAGES/summary.py" <<'PY_SUMMARY_EOF'
"""Print one compact table from the stage logs in OUT (gpu_check.sh)."""
import glob
import os
import re
import sys

out = sys.argv[1]
R = {}
for path in sorted(glob.glob(os.path.join(out, "*.log"))):
    for line in open(path, errors="replace"):
        if line.startswith("RESULT\t"):
            parts = line.rstrip("\n").split("\t")
            R[parts[1]] = (parts[2], parts[3] if len(parts) > 3 else "")


def v(key, fmt="{:.3f}"):
    if key not in R:
        return "-"
    try:
        return fmt.format(float(R[key][0]))
    except ValueError:
        return R[key][0]


def f(key):
    try:
        return float(R[key][0])
    except (KeyError, ValueError):
        return None


def read(name):
    path = os.path.join(out, name + ".log")
    return open(path, errors="replace").read() if os.path.exists(path) else ""


info = read("env")
print("=" * 100)
print("relbench GPU check:", " | ".join(l.strip() for l in info.splitlines() if l.strip()))
status_path = os.path.join(out, "status")
status = open(status_path).read().strip().splitlines() if os.path.exists(status_path) else []
print("stages:", " | ".join(status))
print("-" * 100)
steps = next((k.split("/")[-1] for k in R if k.startswith("pipeline/sdxl/B1/")), "10steps")
n = int(re.sub(r"\D", "", steps) or 10)
print(f"GENERATION, 1024 px, SDXL-shaped random weights, relbench's generate() (Euler, CFG 5; pipeline timed at {n} steps, 30 extrapolated)")
print(f"{'path':<14}{'B':>3}{'UNet step s':>13}{'s/img@' + str(n):>11}{'s/img@30':>10}{'img/s@30':>10}{'peak GiB':>10}")
for path in ("sdxl", "ms-diffusion"):
    for b in (1, 4):
        step = f(f"unet_step/{path}/fp16/B{b}")
        per = f(f"pipeline/{path}/B{b}/{steps}")
        est = per + (30 - n) * step / b if (step is not None and per is not None) else None
        print(f"{path:<14}{b:>3}{v(f'unet_step/{path}/fp16/B{b}'):>13}{v(f'pipeline/{path}/B{b}/{steps}'):>11}"
              f"{(f'{est:.3f}' if est else '-'):>10}{(f'{1 / est:.3f}' if est else '-'):>10}{v(f'pipeline/{path}/B{b}/peak_GiB', '{:.1f}'):>10}")
print("UNet step, B=4 (CFG batch 8): sdxl fp16 %s | bf16 %s | fp16+channels_last %s | dreamrelation LoRA unfused %s, merged %s | compiled %s (compile %s s)" % (
    v("unet_step/sdxl/fp16/B4"), v("unet_step/sdxl/bf16/B4"), v("unet_step/sdxl/fp16+channels_last/B4"),
    v("unet_step/dreamrelation(lora unfused)/fp16/B4"), v("unet_step/dreamrelation(lora merged)/fp16/B4"),
    v("unet_step/dreamrelation(merged)+compile/fp16/B4"), v("compile/first_call_s", "{:.0f}")))
print("VAE decode s/image (4 at once): fp32 upcast (current) %s | fp16 %s | bf16 %s | fp32+slicing %s (peak %s GiB)" % (
    v("vae_decode/fp32_upcast(current)/4img"), v("vae_decode/fp16/4img"), v("vae_decode/bf16/4img"),
    v("vae_decode/fp32+slicing/4img"), v("vae_decode/fp32+slicing/peak_GiB", "{:.1f}")))
print("-" * 100)
print("TRAINING")
for name, label in (("train_gc", "bf16, gradient checkpointing"), ("train_nogc", "bf16, no checkpointing")):
    text = read(name)
    cached = re.search(r"cached encodings \(relbench\):\s+([\d.]+) s/step, peak (\S+) GiB", text)
    per = re.search(r"per-step encoding \(reference\):\s+([\d.]+) s/step, peak (\S+) GiB", text)
    if cached:
        print(f"DreamRelation step (bench/train_step.py --sdxl-shapes 1024 px, {label}): cached {cached.group(1)} s/step, peak {cached.group(2)} GiB"
              + (f" | per-step encoding {per.group(1)} s/step, peak {per.group(2)} GiB | speed-up {float(per.group(1)) / float(cached.group(1)):.2f}x" if per else ""))
    else:
        print(f"DreamRelation step ({label}): - (see {name}.log)")
for tag in ("no checkpointing (trainer default)", "gradient checkpointing"):
    print(f"dreambooth-lora micro-step ({tag}): {v('finetune/dreambooth-lora micro-step/' + tag)} s, peak {v('finetune/peak_GiB/' + tag, '{:.1f}')} GiB"
          f" -> {v('finetune/dreambooth-lora per subject set (4000 micro-steps)/' + tag, '{:.1f}')} min per subject set,"
          f" {v('finetune/dreambooth-lora RelationBench (120 sets)/' + tag, '{:.1f}')} GPU-h for RelationBench")
for key in sorted(k for k in R if k.startswith("syncs/")):
    print(f"host syncs per call, {key[6:]}: {R[key][0]}  ({R[key][1]})")
print("-" * 100)
print("METRICS, full shapes (random weights), 1024 px images, img/s: batched (16) / one at a time")
rows = {}
for dtype in ("fp32", "bf16", "tf32"):
    text = read("metrics_" + dtype)
    for line in text.splitlines():
        m = re.match(r"^(\S.*?)\s+([\d.]+)\s+([\d.e+-]+)\s+([\d.e+-]+)\s+([\d.]+)x$", line)
        if m:
            rows.setdefault(m.group(1), {})[dtype] = (m.group(3), m.group(4))
print(f"{'metric':<24}{'fp32 (default)':>18}{'fp32+TF32':>18}{'bf16':>18}")
for name, by in rows.items():
    cell = lambda d: "/".join(by[d]) if d in by else "-"  # noqa: E731
    print(f"{name:<24}{cell('fp32'):>18}{cell('tf32'):>18}{cell('bf16'):>18}")
print("-" * 100)
print("JUDGE, Qwen2.5-VL-7B shapes (random weights, bf16), 1024 px image, 7 questions per image (RelationBench: relation + 2 presence + 4 MC rotations)")
print("tokens per prompt %s | vision tower %s s/image | as relbench runs it %s s/image | image+prefix once, questions on the KV cache %s s/image | speed-up %s | max |dP| %s | attn %s | peak %s GiB" % (
    v("judge/tokens/prompt", "{:.0f}"), v("judge/vision_tower/per_image"), v("judge/current/per_image"), v("judge/prefix_reuse/per_image"),
    v("judge/prefix_reuse/speedup", "{:.2f}x"), v("judge/prefix_reuse/max_abs_diff_prob", "{:.2g}"), v("judge/attn_implementation"),
    v("judge/peak_GiB", "{:.1f}")))
print("=" * 100)
PY_SUMMARY_EOF
START=$SECONDS
: > "$OUT/status"
stage() {  # stage NAME LIMIT_S COMMAND...: runs COMMAND with what is left of the budget, log in OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET_S - (SECONDS - START) ))
  if (( left < 25 )); then echo "$name skipped (budget)" | tee -a "$OUT/status"; return; fi
  (( limit > left )) && limit=$left
  local began=$SECONDS
  echo ">> $name (limit ${limit}s): $*" >&2
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local what=ok; (( rc == 124 || rc == 137 )) && what="TIMEOUT"; (( rc != 0 && rc != 124 && rc != 137 )) && what="FAILED rc=$rc"
  echo "$name $what $((SECONDS - began))s" | tee -a "$OUT/status" >&2
  if [ "$what" != ok ]; then tail -n 5 "$OUT/$name.log" | sed "s/^/   $name: /" >&2; fi
}
{
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| cuda', torch.cuda.is_available())"
  echo "repo $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?') | budget ${BUDGET_S}s | tiny ${TINY}"
} > "$OUT/env.log" 2>&1

if [ "$TINY" = 1 ]; then
  G=(--tiny --res 64 --steps 2 --reps 1); TS=(--profile tiny --steps 1); M=(--images 2 --size 64 --metrics clip_t,dino --threads 1)
  J=(--tiny --size 256); F=(--tiny --res 64 --steps 2)
else
  G=(--res 1024 --steps 10 --reps 2); TS=(--sdxl-shapes --resolution 1024 --dtype bf16 --steps 3); M=(--full-shapes --images 32 --size 1024)
  J=(--size 1024 --images 2); F=(--res 1024 --steps 6)
  [ "${GPU_CHECK_COMPILE:-0}" = 1 ] && G+=(--compile)
fi
# In order of importance; each stage is cut at its limit and the last ones are skipped when the budget is spent.
stage gen          150 "$PY" "$STAGES/gen.py" "${G[@]}"
stage train_gc      90 "$PY" bench/train_step.py "${TS[@]}" --gradient-checkpointing
stage metrics_fp32  80 "$PY" bench/metrics_throughput.py "${M[@]}" --dtype float32
stage metrics_bf16  70 "$PY" bench/metrics_throughput.py "${M[@]}" --dtype bfloat16
stage judge         75 "$PY" "$STAGES/judge.py" "${J[@]}"
stage finetune      50 "$PY" "$STAGES/finetune.py" "${F[@]}"
stage syncs         40 "$PY" "$STAGES/syncs.py" "$REPO"
stage train_nogc    70 "$PY" bench/train_step.py "${TS[@]}"
stage metrics_tf32  70 env TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 "$PY" bench/metrics_throughput.py "${M[@]}" --dtype float32
echo "total $((SECONDS - START))s" >> "$OUT/status"
"$PY" "$STAGES/summary.py" "$OUT" | tee "$OUT/summary.txt"
echo "logs: $OUT"
