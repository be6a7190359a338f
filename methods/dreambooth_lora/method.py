"""``dreambooth-lora``: SDXL with a DreamBooth LoRA fine-tuned on each case's subjects.

Per subject set (a case's two or three subjects, in either order), a LoRA is trained jointly on all
their reference images, each subject with its own rare token and instance prompt ("a photo of sks
dog"), with the recipe of diffusers' ``train_dreambooth_lora_sdxl.py`` (see ``train.py``: rank 4,
lr 1e-4, batch 1 x 4 accumulation, 500 steps per subject, 1024 px, no prior preservation). The
training runs in this process (in a run, every subject set before the first image; else on first
need), on the method's own SDXL when the dtypes agree (``finetune_common.lend_parts``), and lands
in ``relbench.trained_cache``, so a sweep trains each subject set once. Generation gives each subject's class noun its token ("a sks dog
hugging a ohwx stuffed animal": tokens go to the subjects sorted by id) and samples like the
``sdxl`` control (Euler, 30 steps, guidance 5.0, DreamRelation's negative prompt), so that the two
differ only in the fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from relbench.errors import RelbenchError
from relbench.method import GUIDANCE, SEED, STEPS, SubjectInput, bounded
from relbench.methods.dreambooth_lora.meta import INFO
from relbench.methods.finetune_common import (
    MIXED_PRECISION, RARE_TOKENS, SubjectFinetuneMethod, check_single_tokens, default_dtype, split_list,
)
from relbench.methods.sdxl.method import DREAMRELATION_NEGATIVE_PROMPT
from relbench.options import MAX_RESOLUTION
from relbench.profiles import RunContext


@dataclass(frozen=True)
class DreamBoothLoRASettings:
    # Optimizer steps per subject; a set of N subjects trains N times this (README_sdxl: 500 for one subject).
    max_train_steps_per_subject: int = bounded(500, 1)
    # AdamW learning rate, constant, no warm-up (README_sdxl: 1e-4, constant, 0 warm-up steps).
    learning_rate: float = bounded(1e-4, 0, 1)
    # LoRA rank on the UNet's attention projections to_q/k/v/out (train_dreambooth_lora_sdxl.py --rank default 4; alpha = rank).
    rank: int = bounded(4, 1)
    # Images per micro-batch (README_sdxl: 1).
    train_batch_size: int = bounded(1, 1)
    # Micro-batches per optimizer step (README_sdxl: 4).
    gradient_accumulation_steps: int = bounded(4, 1)
    # Training resolution in pixels (README_sdxl: 1024).
    resolution: int = bounded(1024, 16, MAX_RESOLUTION)
    # Training seed: LoRA init, crops, sample order, noise (README_sdxl: 0).
    seed: int = bounded(0, *SEED)
    # Rare token of subjects 1..3, the subjects sorted by id (README_sdxl's "sks", then single rare CLIP tokens).
    tokens: str = ",".join(RARE_TOKENS)
    # Prior preservation on generated class images (README_sdxl trains without it; the DreamBooth paper's prior loss when on).
    with_prior_preservation: bool = False
    # Class images per subject when prior preservation is on (train_dreambooth_lora_sdxl.py --num_class_images default 100).
    num_class_images: int = bounded(100, 1)
    # Weight of the prior loss (the script's default 1.0).
    prior_loss_weight: float = bounded(1.0, 0)
    # Mixed precision of training: fp16 on GPU as README_sdxl, "no" on CPU.
    mixed_precision: str = "fp16"
    # Euler sampling steps (the sdxl control and DreamRelation's inference: 30; README_sdxl's example uses 25).
    num_inference_steps: int = bounded(30, *STEPS)
    # Classifier-free guidance scale (SDXL pipeline default and DreamRelation's inference: 5.0).
    guidance_scale: float = bounded(5.0, *GUIDANCE)
    # Negative prompt (DreamRelation's inference, as the sdxl control).
    negative_prompt: str = DREAMRELATION_NEGATIVE_PROMPT
    # LoRA strength at inference (1.0: as trained).
    lora_scale: float = bounded(1.0, -10, 10)
    # Weights dtype for generation: float16 on GPU as the authors ran it; float32 on CPU.
    dtype: str = "float16"
    # SDXL weight files variant ("fp16" halves the download); "" for none.
    variant: str = "fp16"


TRAINING_FIELDS = (
    "max_train_steps_per_subject", "learning_rate", "rank", "train_batch_size", "gradient_accumulation_steps",
    "resolution", "seed", "tokens", "with_prior_preservation", "num_class_images", "prior_loss_weight",
    "mixed_precision", "variant",
)


class DreamBoothLoRA(SubjectFinetuneMethod):
    info = INFO
    settings_cls = DreamBoothLoRASettings
    training_fields = TRAINING_FIELDS

    @classmethod
    def default_settings(cls, context: RunContext) -> DreamBoothLoRASettings:
        dtype, variant = default_dtype(context)
        if context.is_tiny:
            # Random tiny weights: two steps per subject and two sampling steps show the whole loop runs.
            return DreamBoothLoRASettings(max_train_steps_per_subject=2, gradient_accumulation_steps=1, resolution=64,
                                          num_class_images=2, mixed_precision="no", num_inference_steps=2, dtype=dtype, variant=variant)
        if context.torch_device().type == "cpu":
            return DreamBoothLoRASettings(mixed_precision="no", dtype=dtype, variant=variant)
        return DreamBoothLoRASettings()

    @classmethod
    def token_names(cls, settings: DreamBoothLoRASettings, count: int) -> tuple[str, ...]:
        tokens = split_list(settings.tokens, f"--set {cls.name}.tokens")
        if len(tokens) < count:
            raise RelbenchError(f"--set {cls.name}.tokens: {count} subjects need {count} tokens, got {settings.tokens!r}")
        return tokens[:count]

    @classmethod
    def check_settings(cls, settings: DreamBoothLoRASettings) -> None:
        from relbench.tiny import clip_tokenizer

        # The fields' declared ranges are checked before this (Method.check_setting_ranges); here what
        # a range cannot say.
        where = f"--set {cls.name}"
        if settings.resolution % 8:
            raise RelbenchError(f"{where}.resolution: expected a multiple of 8, got {settings.resolution}")
        if settings.mixed_precision not in MIXED_PRECISION:
            raise RelbenchError(f"{where}.mixed_precision: expected one of {', '.join(MIXED_PRECISION)}, got {settings.mixed_precision!r}")
        if not settings.learning_rate > 0:
            raise RelbenchError(f"{where}.learning_rate: expected a positive number, got {settings.learning_rate}")
        check_single_tokens([clip_tokenizer()], split_list(settings.tokens, f"{where}.tokens"), f"{where}.tokens")

    def __init__(self, context: RunContext, settings: DreamBoothLoRASettings | None = None):
        super().__init__(context, settings)
        self.adapter: str | None = None
        self._adapters_loaded = 0

    def training_arguments(self, subjects: Sequence[SubjectInput]) -> list[str]:
        c = self.config
        argv = [
            "--max-train-steps", str(c.max_train_steps_per_subject * len(subjects)), "--learning-rate", repr(c.learning_rate),
            "--rank", str(c.rank), "--train-batch-size", str(c.train_batch_size),
            "--gradient-accumulation-steps", str(c.gradient_accumulation_steps), "--resolution", str(c.resolution),
            "--seed", str(c.seed), "--tokens", ",".join(self.token_names(c, len(subjects))), "--mixed-precision", c.mixed_precision,
        ]
        if c.with_prior_preservation:
            from relbench.trained_cache import cache_root

            # Class images depend on the model and class noun only: shared by every subject set.
            argv += ["--with-prior-preservation", "--num-class-images", str(c.num_class_images),
                     "--prior-loss-weight", repr(c.prior_loss_weight),
                     "--class-data-dir", str(cache_root() / self.name / "class-images" / self._class_images_id())]
        return argv

    def _class_images_id(self) -> str:
        import hashlib
        import json

        s = self.training_settings()
        what = {"model": s["model"], "resolution": s["resolution"], "variant": s["variant"], "seed": s["seed"]}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def activate(self, folder: Path, subjects: Sequence[SubjectInput]) -> None:
        from diffusers.utils import logging as diffusers_logging

        from relbench.methods.dreambooth_lora.train import LORA_WEIGHT_NAME, read_lora

        read_lora(folder / LORA_WEIGHT_NAME)  # a clear error for a damaged cache file
        if self.adapter is not None:
            self.pipe.delete_adapters([self.adapter])
        self._adapters_loaded += 1
        name = f"subjects_{self._adapters_loaded}"
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # "no LoRA keys for the text encoders": expected, UNet-only LoRA
        try:
            self.pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME, adapter_name=name)
        finally:
            diffusers_logging.set_verbosity(verbosity)
        self.pipe.set_adapters([name], adapter_weights=[self.config.lora_scale])
        self.adapter = name

    def deactivate(self) -> None:
        # The LoRA layers themselves go (not only the adapter): a training's LoRA then starts on plain layers.
        if self.adapter is not None:
            self.pipe.unload_lora_weights()
            self.adapter = None

    def negative_prompt(self) -> str | None:
        return self.config.negative_prompt or None
