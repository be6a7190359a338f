"""``dreamrelation``: SDXL + the MS-Diffusion adapter + a relation LoRA per relation.

Each case is generated with its layout boxes, its subjects' reference images and phrases (class
nouns), and the LoRA trained for its relation. LoRAs are given as ``--lora FILE`` (one LoRA for
every relation) or ``--lora RELATION=FILE`` (repeatable); a file or a folder holding
``pytorch_lora_weights.safetensors``, e.g. the released DreamRelation LoRAs or the output of
``relbench train dreamrelation``. Each LoRA file's SHA-256 is part of the settings hash, so
retraining into the same path never mixes with old results. Without any LoRA the method is the
MS-Diffusion baseline and says so in its settings.

Each subject shows one reference image: the (seed mod number of references)-th, so that several
seeds use several references. Inference settings are the reference's: Euler, 30 steps, guidance 5.0, its negative prompt,
adapter scale 0.6; the unconditional branch gets zero image embeddings and zero boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError
from relbench.method import GenerationRequest, Method
from relbench.profiles import RunContext

if TYPE_CHECKING:
    from PIL import Image

DREAMRELATION_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
ALL_RELATIONS = "*"


@dataclass(frozen=True)
class DreamRelationSettings:
    # Relation LoRAs: "FILE" for every relation, or "RELATION=FILE,RELATION=FILE"; "" for none.
    loras: str = ""
    # Strength of the relation LoRA (the reference loads it at 1.0).
    lora_scale: float = 1.0
    # Denoising steps of the Euler sampler (reference inference: 30).
    num_inference_steps: int = 30
    # Classifier-free guidance scale (reference inference: 5.0).
    guidance_scale: float = 5.0
    # Negative prompt (the reference's).
    negative_prompt: str = DREAMRELATION_NEGATIVE_PROMPT
    # Weight of the adapter's image attention (reference: 0.6).
    scale: float = 0.6
    # Weights dtype: float16 on GPU as the authors ran it; float32 on CPU.
    dtype: str = "float16"
    # SDXL weight files variant ("fp16" halves the download); "" for none.
    variant: str = "fp16"


def parse_loras(value: str) -> dict[str, str]:
    """``"hug=a.safetensors,shake=b"`` -> {"hug": ..., "shake": ...}; ``"a.safetensors"`` -> {"*": ...}."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        relation, sep, path = part.partition("=")
        if not sep:
            relation, path = ALL_RELATIONS, part
        if not relation.strip() or not path.strip():
            raise RelbenchError(f"--lora {part!r}: expected FILE or RELATION=FILE")
        if relation in out:
            raise RelbenchError(f"--lora: two LoRAs for relation {relation!r}")
        out[relation.strip()] = path.strip()
    return out


class DreamRelation(Method):
    name = "dreamrelation"
    profiles = ("tiny", "full")
    settings_cls = DreamRelationSettings
    model_keys = ("sdxl", "ms_adapter", "image_encoder")
    min_subjects = 1
    max_subjects = 3  # the reference's layouts and training cover two or three subjects
    batch_size = 4

    @classmethod
    def default_settings(cls, context: RunContext) -> DreamRelationSettings:
        if context.is_tiny:
            return DreamRelationSettings(num_inference_steps=2, dtype="float32", variant="")
        if context.torch_device().type == "cpu":
            return DreamRelationSettings(dtype="float32", variant="")
        return DreamRelationSettings()

    @classmethod
    def settings_fingerprint(cls, settings: DreamRelationSettings) -> dict[str, Any]:
        from relbench.methods.dreamrelation.lora import file_sha256, resolve_lora_file

        return {"lora_sha256": {rel: file_sha256(resolve_lora_file(path)) for rel, path in sorted(parse_loras(settings.loras).items())}}

    @classmethod
    def check_cases(cls, settings: DreamRelationSettings, benchmark: Any, cases: Sequence[Any]) -> None:
        loras = parse_loras(settings.loras)
        if not loras or ALL_RELATIONS in loras:
            return
        missing = sorted({case.relation for case in cases} - set(loras))
        if missing:
            raise RelbenchError(
                f"dreamrelation: no LoRA for relation(s) {', '.join(missing)} (LoRAs given for: {', '.join(sorted(loras))}); "
                f"pass --lora RELATION=FILE for each, or evaluate only those relations with --relations {','.join(sorted(loras))}"
            )

    def __init__(self, context: RunContext, settings: DreamRelationSettings | None = None):
        super().__init__(context, settings)
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        from relbench.methods.dreamrelation.lora import file_sha256, read_lora_file, resolve_lora_file
        from relbench.methods.dreamrelation.models import load_models

        self.models = load_models(context, dtype=self.config.dtype, variant=self.config.variant or None)
        m = self.models
        self.pipe = StableDiffusionXLPipeline(
            vae=m.vae, text_encoder=m.text_encoder, text_encoder_2=m.text_encoder_2, tokenizer=m.tokenizer,
            tokenizer_2=m.tokenizer_2, unet=m.unet, scheduler=EulerDiscreteScheduler.from_config(m.scheduler_config),
            add_watermarker=False,
        )
        self.pipe.set_progress_bar_config(disable=True)
        self.loras: dict[str, str] = {}  # relation -> adapter name in the pipeline
        self.lora_files: dict[str, dict[str, str]] = {}
        for index, (relation, source) in enumerate(sorted(parse_loras(self.config.loras).items())):
            path = resolve_lora_file(source)
            read_lora_file(path)  # refuses truncated or non-LoRA files with a clear message
            adapter_name = f"relation_{index}"
            try:
                self.pipe.load_lora_weights(str(path), adapter_name=adapter_name)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise RelbenchError(f"{path}: does not fit this UNet ({' '.join(str(exc).split())[:200]})") from exc
            self.loras[relation] = adapter_name
            self.lora_files[relation] = {"path": str(path), "sha256": file_sha256(path)}

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "models": self.models.describe(),
            "lora_files": self.lora_files,
            "variant_of": "ms-diffusion (no relation LoRA)" if not self.loras else "dreamrelation",
            "scheduler": "EulerDiscreteScheduler",
        }

    def _activate(self, relation: str | None) -> None:
        name = self.loras.get(relation or "", self.loras.get(ALL_RELATIONS))
        if not self.loras:
            return
        if name is None:
            raise RelbenchError(f"dreamrelation: no LoRA for relation {relation!r}")
        self.pipe.set_adapters([name], adapter_weights=[self.config.lora_scale])

    def generate(self, requests: Sequence[GenerationRequest]) -> list["Image.Image"]:
        from relbench.methods.ms_diffusion.pipeline import generate_with_layout

        for request in requests:
            self.check_request(request)
        images: dict[int, "Image.Image"] = {}
        # One call per (relation LoRA, number of subjects, size): the adapter context length depends on N.
        groups: dict[tuple[str | None, int, int, int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.relation_id, len(r.subjects), r.width, r.height), []).append(i)
        for (relation, _, width, height), indices in groups.items():
            self._activate(relation)
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
            )
            images.update(zip(indices, out))
        return [images[i] for i in range(len(requests))]
