"""``custom-diffusion``: SDXL with Custom Diffusion weights fine-tuned on each case's subjects.

Per subject set (a case's two or three subjects, in either order), the cross-attention key/value
projections and one modifier token per subject (``<new1>``, ``<new2>``, ... given to the subjects
sorted by id) are trained jointly on all their reference images with the authors' recipe (see
``train.py``). SDXL rather than SD 1.x: the authors' repository trains SDXL as well
(``src/diffusers_training_sdxl.py``; the diffusers example and the paper use SD 1.4), and every
other method here is SDXL at 1024 px, so the comparison isolates the customization method.
The training runs in this process (in a run, every subject set before the first image; else on
first need), on the method's own SDXL when the dtypes agree (``finetune_common.lend_parts``), and
lands in ``relbench.trained_cache``, so a sweep trains each subject set once. Generation puts each subject's token before its class noun
("a <new1> dog hugging a <new2> stuffed animal") and samples as the authors' inference: the
model's own scheduler (Euler for SDXL), 100 steps, guidance 6.0, no negative prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from relbench.errors import RelbenchError
from relbench.method import GUIDANCE, SEED, STEPS, SubjectInput, bounded
from relbench.methods.custom_diffusion.meta import INFO
from relbench.methods.custom_diffusion.train import FREEZE_MODELS, INITIALIZER_TOKENS, MODIFIER_TOKENS
from relbench.methods.finetune_common import (
    MIXED_PRECISION, SubjectFinetuneMethod, check_single_tokens, default_dtype, split_list,
)
from relbench.options import MAX_RESOLUTION
from relbench.profiles import RunContext


@dataclass(frozen=True)
class CustomDiffusionSettings:
    # Optimizer steps per subject; a set of N subjects trains N times this (authors: 250 for one concept, 500 for two).
    max_train_steps_per_subject: int = bounded(250, 1)
    # Base learning rate (authors: 1e-5), multiplied by batch x accumulation x processes when scale_lr (and x2 with prior preservation).
    learning_rate: float = bounded(1e-5, 0, 1)
    # Scale the learning rate as above (authors: --scale_lr).
    scale_lr: bool = True
    # Images per micro-batch (authors: 2).
    train_batch_size: int = bounded(2, 1)
    # Micro-batches per optimizer step: 2 on one GPU stands for the authors' two GPUs (same batch of 4 and learning rate).
    gradient_accumulation_steps: int = bounded(2, 1)
    # Training resolution in pixels (authors' SDXL script: 1024).
    resolution: int = bounded(1024, 64, MAX_RESOLUTION)
    # Training seed: sample order, augmentation, noise (the diffusers example's default 42).
    seed: int = bounded(42, *SEED)
    # What trains in cross-attention: crossattn_kv (authors' default) or crossattn (also Q and output, their choice for faces).
    freeze_model: str = "crossattn_kv"
    # Single tokens whose embeddings start <new1>, <new2>, <new3> (authors: ktn+pll+ucd; "ktn" is two CLIP tokens, so ohwx).
    initializer_tokens: str = ",".join(INITIALIZER_TOKENS)
    # Random horizontal flips (authors: --hflip).
    hflip: bool = True
    # The authors' random scale augmentation with masked loss and "far away"/"close up" prompts (on unless --noaug).
    augment: bool = True
    # Prior preservation on generated class images (authors: 200 retrieved real images, which need the network; off here).
    with_prior_preservation: bool = False
    # Class images per subject when prior preservation is on (authors: 200).
    num_class_images: int = bounded(200, 1)
    # Weight of the prior loss (authors: 1.0).
    prior_loss_weight: float = bounded(1.0, 0)
    # Mixed precision of training: fp16 on GPU, "no" on CPU.
    mixed_precision: str = "fp16"
    # Sampling steps with the model's scheduler (diffusers example README: 100; the authors' sample script: 200).
    num_inference_steps: int = bounded(100, *STEPS)
    # Classifier-free guidance scale (authors: 6.0).
    guidance_scale: float = bounded(6.0, *GUIDANCE)
    # Weights dtype for generation: float16 on GPU as the authors ran it; float32 on CPU.
    dtype: str = "float16"
    # SDXL weight files variant ("fp16" halves the download); "" for none.
    variant: str = "fp16"


TRAINING_FIELDS = (
    "max_train_steps_per_subject", "learning_rate", "scale_lr", "train_batch_size", "gradient_accumulation_steps",
    "resolution", "seed", "freeze_model", "initializer_tokens", "hflip", "augment", "with_prior_preservation",
    "num_class_images", "prior_loss_weight", "mixed_precision", "variant",
)


class CustomDiffusion(SubjectFinetuneMethod):
    info = INFO
    settings_cls = CustomDiffusionSettings
    training_fields = TRAINING_FIELDS

    @classmethod
    def default_settings(cls, context: RunContext) -> CustomDiffusionSettings:
        dtype, variant = default_dtype(context)
        if context.is_tiny:
            # Random tiny weights: two steps per subject and two sampling steps show the whole loop runs.
            return CustomDiffusionSettings(max_train_steps_per_subject=2, train_batch_size=1, gradient_accumulation_steps=1,
                                           resolution=64, num_class_images=2, mixed_precision="no", num_inference_steps=2,
                                           dtype=dtype, variant=variant)
        if context.torch_device().type == "cpu":
            return CustomDiffusionSettings(mixed_precision="no", dtype=dtype, variant=variant)
        return CustomDiffusionSettings()

    @classmethod
    def token_names(cls, settings: CustomDiffusionSettings, count: int) -> tuple[str, ...]:
        initializers = split_list(settings.initializer_tokens, f"--set {cls.name}.initializer_tokens")
        if len(initializers) < count:
            raise RelbenchError(f"--set {cls.name}.initializer_tokens: {count} subjects need {count} tokens, got {settings.initializer_tokens!r}")
        return MODIFIER_TOKENS[:count]

    @classmethod
    def check_settings(cls, settings: CustomDiffusionSettings) -> None:
        from relbench.tiny import clip_tokenizer

        # The fields' declared ranges are checked before this (Method.check_setting_ranges); here what
        # a range cannot say.
        where = f"--set {cls.name}"
        if settings.resolution % 8:
            raise RelbenchError(f"{where}.resolution: expected a multiple of 8, got {settings.resolution}")
        if settings.mixed_precision not in MIXED_PRECISION:
            raise RelbenchError(f"{where}.mixed_precision: expected one of {', '.join(MIXED_PRECISION)}, got {settings.mixed_precision!r}")
        if settings.freeze_model not in FREEZE_MODELS:
            raise RelbenchError(f"{where}.freeze_model: expected one of {', '.join(FREEZE_MODELS)}, got {settings.freeze_model!r}")
        if not settings.learning_rate > 0:
            raise RelbenchError(f"{where}.learning_rate: expected a positive number, got {settings.learning_rate}")
        check_single_tokens([clip_tokenizer()], split_list(settings.initializer_tokens, f"{where}.initializer_tokens"), f"{where}.initializer_tokens")

    def __init__(self, context: RunContext, settings: CustomDiffusionSettings | None = None):
        super().__init__(context, settings)
        # The base model's cross-attention processors, put back before another subject set's are installed.
        self.base_processors = dict(self.pipe.unet.attn_processors)
        self.loaded_tokens: list[str] = []

    def training_arguments(self, subjects: Sequence[SubjectInput]) -> list[str]:
        c, n = self.config, len(subjects)
        argv = [
            "--max-train-steps", str(c.max_train_steps_per_subject * n), "--learning-rate", repr(c.learning_rate),
            "--scale-lr" if c.scale_lr else "--no-scale-lr", "--train-batch-size", str(c.train_batch_size),
            "--gradient-accumulation-steps", str(c.gradient_accumulation_steps), "--resolution", str(c.resolution),
            "--seed", str(c.seed), "--freeze-model", c.freeze_model,
            "--modifier-tokens", "+".join(self.token_names(c, n)),
            "--initializer-tokens", "+".join(split_list(c.initializer_tokens, "initializer_tokens")[:n]),
            "--hflip" if c.hflip else "--no-hflip", "--augment" if c.augment else "--no-augment",
            "--mixed-precision", c.mixed_precision,
        ]
        if c.with_prior_preservation:
            import hashlib
            import json

            from relbench.trained_cache import cache_root

            # Class images depend on the model and class noun only: shared by every subject set.
            s = self.training_settings()
            what = hashlib.sha256(json.dumps({k: s[k] for k in ("model", "resolution", "variant", "seed")}, sort_keys=True).encode()).hexdigest()[:16]
            argv += ["--with-prior-preservation", "--num-class-images", str(c.num_class_images),
                     "--prior-loss-weight", repr(c.prior_loss_weight), "--class-data-dir", str(cache_root() / self.name / "class-images" / what)]
        return argv

    def deactivate(self) -> None:
        pipe = self.pipe
        if self.loaded_tokens:
            pipe.unload_textual_inversion(tokens=self.loaded_tokens, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
            pipe.unload_textual_inversion(tokens=self.loaded_tokens, tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2)
            self.loaded_tokens = []
        pipe.unet.set_attn_processor(dict(self.base_processors))

    def activate(self, folder: Path, subjects: Sequence[SubjectInput]) -> None:
        import json

        from relbench.methods.custom_diffusion.train import (
            TOKENS_FILE, WEIGHT_NAME, install_processors, processors_from_state, read_embeddings, read_weights,
        )

        tokens = list(self.token_names(self.config, len(subjects)))
        try:
            recorded = [item["token"] for item in json.loads((folder / TOKENS_FILE).read_text())]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RelbenchError(f"{folder / TOKENS_FILE}: cannot read the trained tokens ({exc}); delete {folder} to retrain") from exc
        if recorded != tokens:
            raise RelbenchError(f"{folder / TOKENS_FILE}: trained tokens {recorded} differ from {tokens}; delete the folder to retrain")
        pipe = self.pipe
        self.deactivate()
        path = folder / WEIGHT_NAME
        procs = processors_from_state(pipe.unet, read_weights(path), path)
        install_processors(pipe.unet, {name: proc.to(dtype=pipe.unet.dtype) for name, proc in procs.items()})
        from transformers.utils import logging as transformers_logging

        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # the resize notice: the new rows are overwritten at once
        try:
            for token in tokens:
                embeds = read_embeddings(folder, token)
                pipe.load_textual_inversion(embeds["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
                pipe.load_textual_inversion(embeds["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
        finally:
            transformers_logging.set_verbosity(verbosity)
        self.loaded_tokens = tokens
