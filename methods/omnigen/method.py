"""``omnigen``: OmniGen v1 (diffusers' ``OmniGenPipeline``) with the subjects' images in its prompt.

OmniGen reads images inside its prompt: ``<img><|image_k|></img>`` stands for the k-th input image.
Each subject gives one reference image (the (seed mod number of references)-th, as in
ms-diffusion), in subject order, and the case's prompt is rewritten to point at them
(``build_prompt``, versioned by the ``prompt_style`` setting):

* ``inline-v1`` (default): each subject's first mention, in subject order, gets its image:
  "an astronaut hugging a cat" -> "the astronaut in <img><|image_1|></img> hugging the cat in
  <img><|image_2|></img>" (the article becomes "the": the subject is the one shown). When a class
  noun cannot be found in order, the prompt falls back to ``appended-v1``.
* ``appended-v1``: the prompt, then one sentence per subject in the style of OmniGen's examples:
  "an astronaut hugging a cat. The astronaut is the one in <img><|image_1|></img>. The cat is the
  one in <img><|image_2|></img>."

Sampling follows the authors (diffusers' OmniGen docs): 50 steps, guidance 2.5, image guidance
1.6, input images up to 1024 px, bfloat16 on GPU. One request per pipeline call: the pipeline
samples the VAE posterior of the input images from torch's global generator, which is seeded
from the request's seed (and restored afterwards), so an image depends on its seed alone.

Tiny profile: a config-built OmniGen transformer (2 layers, 32 wide), a tiny VAE and a tokenizer
built offline. OmniGen's real tokenizer (Phi-3's SentencePiece vocabulary) ships with no
installed package, so the tiny one is the CLIP BPE (``relbench.tiny.clip_bpe_files``) laid out
with the conventions OmniGen's processor relies on: ``<unk>``/``<s>``/``</s>`` at ids 0/1/2, a
``<s>`` (id 1) in front of every encoded chunk (the processor strips it from the chunks after an
image), and Phi-3's chat tokens (``<|user|>``, ``<|assistant|>``, ``<|end|>``, ...) as special tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError
from relbench.method import GUIDANCE, STEPS, GenerationRequest, Method, bounded
from relbench.methods.omnigen.meta import INFO
from relbench.options import MAX_RESOLUTION
from relbench.profiles import RunContext, pipeline_revision, torch_dtype

if TYPE_CHECKING:
    from PIL import Image

PROMPT_STYLES = ("inline-v1", "appended-v1")
# Phi-3's chat tokens that OmniGen's processor writes around every instruction.
PHI3_SPECIAL_TOKENS = ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")


@dataclass(frozen=True)
class OmniGenSettings:
    # How the prompt points at the subjects' images (see the module docstring; versioned).
    prompt_style: str = "inline-v1"
    # Denoising steps (authors' default: 50).
    num_inference_steps: int = bounded(50, *STEPS)
    # Text guidance scale (authors' default: 2.5).
    guidance_scale: float = bounded(2.5, *GUIDANCE)
    # Image guidance scale (authors' default with input images: 1.6).
    img_guidance_scale: float = bounded(1.6, *GUIDANCE)
    # Input images are scaled down to at most this many pixels per side (authors' default: 1024).
    max_input_image_size: int = bounded(1024, 16, MAX_RESOLUTION)
    # Weights dtype: bfloat16 on GPU as in the authors' diffusers example; float32 on CPU.
    dtype: str = "bfloat16"


class OmniGen(Method):
    info = INFO
    settings_cls = OmniGenSettings
    model_keys = ("omnigen",)
    # One request per call: see the module docstring (global-generator VAE sampling; memory).
    batch_size = 1
    # Its pipeline packs 1/8 latents into 2x2 patches: other sizes are resized with only a warning.
    resolution_multiple = 16

    @classmethod
    def default_settings(cls, context: RunContext) -> OmniGenSettings:
        if context.is_tiny:
            # Random tiny weights: two steps and 64 px inputs show the whole loop runs.
            return OmniGenSettings(num_inference_steps=2, max_input_image_size=64, dtype="float32")
        if context.torch_device().type == "cpu":
            return OmniGenSettings(dtype="float32")
        return OmniGenSettings()

    @classmethod
    def check_cases(cls, settings: OmniGenSettings, benchmark: Any, cases: Sequence[Any], seeds: Sequence[int] = ()) -> None:
        _check_settings(settings)

    def __init__(self, context: RunContext, settings: OmniGenSettings | None = None):
        super().__init__(context, settings)
        _check_settings(self.config)
        self.model_ref = context.model("omnigen")
        self.device = context.torch_device()
        self.resolved_revision: str | None = None
        self.pipe = self._load()

    def _load(self) -> Any:
        from diffusers import OmniGenPipeline

        dtype = torch_dtype(self.config.dtype)
        if self.model_ref.is_tiny:
            pipe = OmniGenPipeline(**tiny_omnigen_components(self.context.seed))
            if dtype != pipe.transformer.dtype:
                pipe = pipe.to(dtype=dtype)  # tiny weights are built in float32
        else:
            from relbench.errors import exception_line
            from relbench.models_manifest import fix_hint, require_cached_ref

            require_cached_ref("omnigen", self.model_ref.id, self.model_ref.revision)
            try:
                pipe = OmniGenPipeline.from_pretrained(self.model_ref.id, revision=self.model_ref.revision, dtype=dtype)
            except (OSError, ValueError) as exc:
                raise RelbenchError(
                    f"cannot load OmniGen from {self.model_ref.id!r} ({exception_line(exc)}); {fix_hint('omnigen', self.model_ref.id)}"
                ) from exc
            # An offline load of a missing tokenizer can come back as an almost empty one.
            if pipe.tokenizer is None or len(pipe.tokenizer) < 1000:
                raise RelbenchError(f"--model omnigen={self.model_ref.id}: its tokenizer did not load (folder tokenizer/ missing?)")
            self.resolved_revision = pipeline_revision(pipe)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "model": {**self.model_ref.describe(), "resolved_revision": self.resolved_revision},
            "scheduler": type(self.pipe.scheduler).__name__,
            "tokenizer": "tiny-clip-bpe-llama-layout" if self.model_ref.is_tiny else type(self.pipe.tokenizer).__name__,
        }

    def generate(self, requests: Sequence[GenerationRequest]) -> list["Image.Image"]:
        import torch

        for request in requests:
            self.check_request(request)
        images = []
        for r in requests:
            prompt = build_prompt(r.prompt, [s.class_noun for s in r.subjects], self.config.prompt_style)
            references = [s.images[r.seed % len(s.images)].convert("RGB") for s in r.subjects]
            cuda = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(r.seed)  # the pipeline's VAE posterior sample of the input images
                output = self.pipe(
                    prompt=prompt, input_images=references, height=r.height, width=r.width,
                    num_inference_steps=self.config.num_inference_steps, guidance_scale=self.config.guidance_scale,
                    img_guidance_scale=self.config.img_guidance_scale,
                    max_input_image_size=self.config.max_input_image_size,
                    generator=torch.Generator(device=self.device).manual_seed(r.seed), output_type="pil",
                )
            images.append(output.images[0])
        return images


def image_tag(k: int) -> str:
    """OmniGen's placeholder for the k-th input image (1-based)."""
    return f"<img><|image_{k}|></img>"


def build_prompt(prompt: str, nouns: Sequence[str], style: str = "inline-v1") -> str:
    """The case's prompt with subject k (1-based, in order) pointing at input image k."""
    if style not in PROMPT_STYLES:
        raise RelbenchError(f"--set omnigen.prompt_style: expected one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    prompt = prompt.strip()
    if style == "inline-v1":
        inline = _inline(prompt, nouns)
        if inline is not None:
            return inline
    sentences = " ".join(f"The {noun} is the one in {image_tag(k)}." for k, noun in enumerate(nouns, start=1))
    return f"{prompt.rstrip('.')}. {sentences}"


def _inline(prompt: str, nouns: Sequence[str]) -> str | None:
    """Each noun's first mention after the previous subject's, as "the NOUN in <tag>"; None when
    some noun is not found in order."""
    parts: list[str] = []
    position = 0
    for k, noun in enumerate(nouns, start=1):
        pattern = re.compile(rf"\b(?:(a|an|the)\s+)?({re.escape(noun)})\b", re.IGNORECASE)
        match = pattern.search(prompt, position)
        if match is None:
            return None
        article, said = match.group(1), match.group(2)
        if article is None:
            mention = said
        else:
            mention = ("The " if article[0].isupper() else "the ") + said
        parts.append(prompt[position : match.start()] + f"{mention} in {image_tag(k)}")
        position = match.end()
    return "".join(parts) + prompt[position:]


def _check_settings(settings: OmniGenSettings) -> None:
    if settings.prompt_style not in PROMPT_STYLES:
        raise RelbenchError(f"--set omnigen.prompt_style: expected one of {', '.join(PROMPT_STYLES)}, got {settings.prompt_style!r}")
    if settings.max_input_image_size < 16:
        raise RelbenchError(f"--set omnigen.max_input_image_size: expected at least 16 pixels, got {settings.max_input_image_size}")


@lru_cache(maxsize=1)
def tiny_omnigen_tokenizer() -> Any:
    """The CLIP BPE vocabulary with a Llama/Phi-3 id layout (see the module docstring), offline."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    from relbench.tiny import CLIP_BOS, CLIP_EOS, clip_bpe_files, clip_tokenizer

    clip = clip_tokenizer().backend_tokenizer
    _, merges_path = clip_bpe_files()
    merges = [tuple(line.split()) for line in merges_path.read_text(encoding="utf-8").splitlines()[1:] if line]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for token, _ in sorted(clip.get_vocab(with_added_tokens=False).items(), key=lambda item: item[1]):
        if token not in (CLIP_BOS, CLIP_EOS):
            vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", end_of_word_suffix="</w>",
                                   continuing_subword_prefix="", fuse_unk=False))
    backend.normalizer, backend.pre_tokenizer, backend.decoder = clip.normalizer, clip.pre_tokenizer, clip.decoder
    backend.add_special_tokens(["<unk>", "<s>", "</s>", *PHI3_SPECIAL_TOKENS])
    # Like Llama's tokenizer: <s> in front, no </s> at the end.
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="</s>")
    if tokenizer.bos_token_id != 1 or tokenizer("a").input_ids[0] != 1:
        raise RuntimeError("tiny OmniGen tokenizer: <s> must be id 1 and lead every encoding")
    return tokenizer


def tiny_omnigen_components(seed: int = 0) -> dict[str, Any]:
    """OmniGenPipeline components with random weights: transformer 2 layers x 32 wide, 4-level VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, OmniGenTransformer2DModel

    from relbench.tiny import seeded

    tokenizer = tiny_omnigen_tokenizer()
    hidden, heads = 32, 4
    with seeded(seed):
        transformer = OmniGenTransformer2DModel(
            in_channels=4, patch_size=2, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=heads,
            intermediate_size=37, num_layers=2, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
            # Phi-3's "su" RoPE scaling needs one factor per rotary frequency (head dim / 2).
            rope_scaling={"short_factor": [1.0] * (hidden // heads // 2), "long_factor": [1.0] * (hidden // heads // 2)},
            time_step_dim=32,
        )
        # Four levels (latents at 1/8) like SDXL's VAE that OmniGen uses: its processor sizes an
        # image's placeholder as (height / 16) x (width / 16) tokens, i.e. 1/8 latents in 2x2 patches.
        vae = AutoencoderKL(
            block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, norm_num_groups=8,
        )
    return {
        "transformer": transformer.eval(), "vae": vae.eval(), "tokenizer": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
    }
