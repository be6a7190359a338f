"""``dreamrelation``: ms-diffusion (SDXL + the MS-Diffusion adapter) + a relation LoRA per relation.

LoRAs are given as ``--lora FILE`` (one LoRA for every relation) or ``--lora RELATION=FILE``
(repeatable): a file or a folder holding ``pytorch_lora_weights.safetensors``, e.g. the released
DreamRelation LoRAs or the output of ``relbench train dreamrelation``. At least one is required:
without a relation LoRA the model is the ``ms-diffusion`` baseline, evaluated under that name.
Each LoRA file's SHA-256 is part of the settings hash, so retraining into the same path never
mixes with old results. Generation is ms-diffusion's (see its module), with the case's relation
LoRA at ``lora_scale`` merged into the UNet's weights for the requests of that relation and the
original weights restored after them (``lora.fused_lora``): no LoRA layer runs at the steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from relbench.errors import RelbenchError
from relbench.method import ALL_RELATIONS, GUIDANCE, STEPS, bounded, parse_relation_map
from relbench.methods.dreamrelation.meta import INFO
from relbench.methods.ms_diffusion.method import NEGATIVE_PROMPT, MSDiffusion
from relbench.profiles import RunContext

RESAMPLER = "image_proj.safetensors"  # a resampler trained with the LoRA (--train-resampler) sits beside it


@dataclass(frozen=True)
class DreamRelationSettings:
    # Relation LoRAs: "FILE" for every relation, or "RELATION=FILE,RELATION=FILE" (required).
    loras: str = ""
    # Strength of the relation LoRA (the reference loads it at 1.0).
    lora_scale: float = bounded(1.0, -10, 10)
    # Denoising steps of the Euler sampler (reference inference: 30).
    num_inference_steps: int = bounded(30, *STEPS)
    # Classifier-free guidance scale (reference inference: 5.0).
    guidance_scale: float = bounded(5.0, *GUIDANCE)
    # Negative prompt (the reference's).
    negative_prompt: str = NEGATIVE_PROMPT
    # Weight of the adapter's image attention (reference: 0.6).
    scale: float = bounded(0.6, 0, 10)
    # Weights dtype: float16 on GPU as the authors ran it; float32 on CPU.
    dtype: str = "float16"
    # SDXL weight files variant ("fp16" halves the download); "" for none.
    variant: str = "fp16"
    # DreamRelation's 16 dense local tokens per subject (needs LoRAs trained with --local-features,
    # which store their resampler beside the LoRA, and --model dense_encoder=DIR in the full profile).
    local_features: bool = False


def parse_loras(value: str) -> dict[str, str]:
    """``"hug=a.safetensors,shake=b"`` -> {"hug": ..., "shake": ...}; ``"a.safetensors"`` -> {"*": ...}."""
    return parse_relation_map(value, "--lora", "FILE")


class DreamRelation(MSDiffusion):
    info = INFO
    settings_cls = DreamRelationSettings

    @classmethod
    def settings_fingerprint(cls, settings: DreamRelationSettings) -> dict[str, Any]:
        from relbench.hashing import file_sha256
        from relbench.methods.dreamrelation.lora import resolve_lora_file

        files = {rel: resolve_lora_file(path) for rel, path in sorted(parse_loras(settings.loras).items())}
        resamplers = {rel: file_sha256(p.parent / RESAMPLER) for rel, p in files.items() if (p.parent / RESAMPLER).is_file()}
        return {"lora_sha256": {rel: file_sha256(p) for rel, p in files.items()}, "image_proj_sha256": resamplers}

    @classmethod
    def check_cases(cls, settings: DreamRelationSettings, benchmark: Any, cases: Sequence[Any], seeds: Sequence[int] = ()) -> None:
        loras = parse_loras(settings.loras)
        if not loras:
            raise RelbenchError(
                "dreamrelation needs a relation LoRA: pass --lora FILE or --lora RELATION=FILE (train one with "
                "`relbench train dreamrelation`); without one the model is the ms-diffusion baseline (--method ms-diffusion)"
            )
        if ALL_RELATIONS in loras:
            return
        missing = sorted({case.relation for case in cases} - set(loras))
        if missing:
            raise RelbenchError(
                f"dreamrelation: no LoRA for relation(s) {', '.join(missing)} (LoRAs given for: {', '.join(sorted(loras))}); "
                f"pass --lora RELATION=FILE for each, or evaluate only those relations with --relations {','.join(sorted(loras))}"
            )

    def __init__(self, context: RunContext, settings: DreamRelationSettings | None = None):
        super().__init__(context, settings)
        from relbench.hashing import file_sha256
        from relbench.methods.dreamrelation.lora import read_relation_lora, resolve_lora_file

        loras = parse_loras(self.config.loras)
        if not loras:
            self.check_cases(self.config, None, [])  # the same message as the runner's early check
        self.loras: dict[str, dict[str, Any]] = {}  # relation -> module name -> LoRAFactors
        self.lora_files: dict[str, dict[str, str]] = {}
        self.resamplers: dict[str, dict[str, Any]] = {}  # relation -> resampler state trained with its LoRA
        self.public_resampler = {k: v.clone() for k, v in self.models.adapter.image_proj.state_dict().items()}
        for relation, source in sorted(loras.items()):
            path = resolve_lora_file(source)
            # Truncated or non-LoRA files, and tensors that do not fit the UNet, in one line each.
            self.loras[relation] = read_relation_lora(path, self.pipe.unet)
            self.lora_files[relation] = {"path": str(path), "sha256": file_sha256(path)}
            self._read_resampler(relation, path.parent / RESAMPLER)

    def _read_resampler(self, relation: str, path: Any) -> None:
        """Keep the resampler trained with this relation's LoRA (if any) to swap in for its cases."""
        from relbench.methods.ms_diffusion.local_features import GRID, load_resampler

        if not path.is_file():
            if self.config.local_features:
                raise RelbenchError(f"{path}: missing; local features need the resampler trained with the LoRA (--local-features)")
            return
        import copy

        resampler = copy.deepcopy(self.models.adapter.image_proj)
        load_resampler(resampler, path, GRID if self.config.local_features else None)  # refuses a grid mismatch
        self.resamplers[relation] = resampler.state_dict()
        self.lora_files[relation]["image_proj"] = str(path)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "lora_files": self.lora_files}

    @contextmanager
    def relation_group(self, relation: str | None) -> Iterator[None]:
        """The relation's LoRA merged into the UNet once for its requests, the weights restored after."""
        from relbench.methods.dreamrelation.lora import fused_lora

        key = relation if relation in self.loras else ALL_RELATIONS
        factors = self.loras.get(key)
        if factors is None:
            raise RelbenchError(f"dreamrelation: no LoRA for relation {relation!r}")
        # The public resampler unless this relation's LoRA was trained with its own.
        self.models.adapter.image_proj.load_state_dict(self.resamplers.get(key, self.public_resampler))
        with fused_lora(self.pipe.unet, factors, self.config.lora_scale):
            yield
