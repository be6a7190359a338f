"""``reversion``: the relation-only baseline. A relation token ``<R>`` is inverted from exemplar
images of the relation (ReVersion, SIGGRAPH Asia 2024) and combined with the subjects' class
nouns at generation: "dog <R> stuffed animal". It sees no reference image of the subjects, so it
measures what relation inversion alone gives.

Where the exemplars of a relation come from, first match wins:

1. ``--set reversion.exemplars=DIR``: ``DIR/<relation id>/``, one folder per relation; or
   ``--set reversion.exemplars=hug=DIR1,shake_hands=DIR2`` (each DIR the relation's own folder).
   A folder is in ReVersion's layout (images + ``text.json`` of coarse descriptions, as in the
   authors' ReVersion benchmark) or a DreamRelation relation folder (``prompts.json`` + motion
   images); see ``data.py``.
2. The benchmark relation's ``reference_poses[*].image`` (relationbench's ``hug`` and
   ``shake_hands`` point at DreamRelation's motion images), with descriptions from a ``text.json``
   beside them or DreamRelation's ``prompts.json``. The runner hands the benchmark over through
   ``use_benchmark``.

A relation with neither is refused (``check_cases``, before any model loads). The token is
trained on first need, once per (relation, exemplar pixels and descriptions, training settings,
base model), into ``relbench.trained_cache`` (``train.py`` does the training, resumably), and
loaded into the pipeline with ``load_textual_inversion`` as a token of its own per relation.

Sampling follows the authors' ``inference.py``: Stable Diffusion 1.5 with its default PNDM
sampler, 50 steps, guidance 7.5, no negative prompt, at SD 1.5's 512 px; images are resized to
the requested size (SD 1.5 duplicates subjects at 1024 px).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError
from relbench.method import ALL_RELATIONS, GUIDANCE, SEED, STEPS, GenerationRequest, Method, bounded, parse_relation_map
from relbench.methods.reversion.meta import INFO
from relbench.options import MAX_RESOLUTION
from relbench.profiles import RunContext

if TYPE_CHECKING:
    from PIL import Image

    from relbench.benchmark import Benchmark
    from relbench.methods.reversion.data import Exemplar

RELATION_SLOT = "<R>"  # where the relation token goes in prompt_template
# Bumped when train.py's fixed recipe (optimizer constants, sampling) changes: retrains cached tokens.
TRAINING_RECIPE = 1


@dataclass(frozen=True)
class ReVersionSettings:
    # Exemplar folders: "DIR" (DIR/<relation>/ per relation) or "RELATION=DIR,..."; "" = the benchmark's reference poses.
    exemplars: str = ""
    # Prompt from the two subjects' class nouns; {0}, {1} = nouns, <R> = the relation token (authors' "cat {} stone").
    prompt_template: str = "{0} <R> {1}"
    # Denoising steps (authors' inference.py: 50, with SD 1.5's default PNDM sampler).
    num_inference_steps: int = bounded(50, *STEPS)
    # Classifier-free guidance scale (authors' inference.py: 7.5).
    guidance_scale: float = bounded(7.5, *GUIDANCE)
    # Negative prompt (the authors use none).
    negative_prompt: str = ""
    # Side of the square SD 1.5 generates at before resizing to the requested size (its native 512); 0 = the requested size.
    generation_size: int = bounded(512, 0, MAX_RESOLUTION)
    # Weights dtype at generation: float16 on GPU as the authors sample; float32 on CPU.
    dtype: str = "float16"
    # Weight files variant of the SD folder ("fp16" halves the download); "" = full-precision files.
    variant: str = ""
    # --- training of <R> (authors' README command) ---
    # Optimizer steps (authors: 3000).
    max_train_steps: int = bounded(3000, 1)
    # Base learning rate (authors: 2.5e-4), multiplied by batch x accumulation x processes when scale_lr.
    learning_rate: float = bounded(2.5e-4, 0, 1)
    # The authors' --scale_lr (on).
    scale_lr: bool = True
    # Exemplars per micro-batch (authors: 2).
    train_batch_size: int = bounded(2, 1)
    # Micro-batches per optimizer step (authors: 4).
    gradient_accumulation_steps: int = bounded(4, 1)
    # Training resolution (authors: 512).
    train_resolution: int = bounded(512, 16, MAX_RESOLUTION)
    # Word whose embedding <R> starts from (authors: "and").
    initializer_token: str = "and"
    # Weight of the denoising loss (authors: 1.0).
    denoise_loss_weight: float = bounded(1.0, 0)
    # Weight of the relation-steering contrastive loss (authors: 0.01).
    steer_loss_weight: float = bounded(0.01, 0)
    # Prepositions drawn per sample as steering positives (authors: 4).
    num_positives: int = bounded(4, 1)
    # Temperature of the steering loss (authors: 0.07).
    temperature: float = bounded(0.07, 0.001, 100)
    # Relation-focal importance sampling of timesteps (authors: on).
    importance_sampling: bool = True
    # Skew alpha of the sampling function 1 - alpha cos(pi t / T) (authors: 0.5).
    scaled_cosine_alpha: float = bounded(0.5, 0, 1)
    # Training seed (authors: 2023).
    train_seed: int = bounded(2023, *SEED)
    # Mixed precision of training: "no" (authors' accelerate config), "fp16" or "bf16".
    mixed_precision: str = "no"


# Settings that shape the trained token (the cache key's "how"); the rest only affect sampling.
TRAINING_FIELDS = (
    "max_train_steps", "learning_rate", "scale_lr", "train_batch_size", "gradient_accumulation_steps", "train_resolution",
    "initializer_token", "denoise_loss_weight", "steer_loss_weight", "num_positives", "temperature", "importance_sampling",
    "scaled_cosine_alpha", "train_seed", "mixed_precision", "variant",
)


def parse_exemplars(value: str) -> dict[str, str]:
    """``"DIR"`` -> {"*": DIR}; ``"hug=A,shake=B"`` -> {"hug": A, "shake": B}."""
    return parse_relation_map(value, "--set reversion.exemplars", "DIR")


def exemplar_folder(settings: ReVersionSettings, relation: str) -> Path | None:
    """The folder the settings name for a relation, or None when they name none."""
    folders = parse_exemplars(settings.exemplars)
    if relation in folders:
        return Path(folders[relation]).expanduser()
    if ALL_RELATIONS in folders:
        candidate = Path(folders[ALL_RELATIONS]).expanduser() / relation
        if candidate.is_dir():
            return candidate
    return None


def _has_reference_images(benchmark: Any, relation: str) -> bool:
    rel = getattr(benchmark, "relations", {}).get(relation) if benchmark is not None else None
    return bool(rel is not None and any(pose.image for pose in rel.reference_poses))


def _check_prompt_template(template: str) -> None:
    try:
        filled = template.format("x", "y")
    except (IndexError, KeyError, ValueError):
        filled = ""
    if filled.count(RELATION_SLOT) != 1 or "{0}" not in template or "{1}" not in template:
        raise RelbenchError(f"--set reversion.prompt_template: expected {{0}}, {{1}} and one {RELATION_SLOT}, e.g. \"{{0}} <R> {{1}}\"; got {template!r}")


class ReVersion(Method):
    info = INFO
    settings_cls = ReVersionSettings
    model_keys = ("sd15",)
    min_subjects = 2
    max_subjects = 2  # a relation token sits between exactly two entities
    batch_size = 4

    @classmethod
    def default_settings(cls, context: RunContext) -> ReVersionSettings:
        if context.is_tiny:
            # Random tiny weights: two training and two sampling steps show the whole loop runs.
            return ReVersionSettings(num_inference_steps=2, generation_size=0, dtype="float32", max_train_steps=2,
                                     gradient_accumulation_steps=1, train_resolution=64)
        if context.torch_device().type == "cpu":
            return ReVersionSettings(dtype="float32")
        return ReVersionSettings()

    @classmethod
    def settings_fingerprint(cls, settings: ReVersionSettings) -> dict[str, Any]:
        """The content of the exemplar folders the settings name (retrained exemplars -> new hash)."""
        from relbench.methods.reversion.data import tree_digest

        digests = {}
        for relation, folder in sorted(parse_exemplars(settings.exemplars).items()):
            path = Path(folder).expanduser()
            digests[relation] = tree_digest(path) if path.is_dir() else "missing"
        return {"exemplar_folders_sha256": digests} if digests else {}

    @classmethod
    def check_cases(cls, settings: ReVersionSettings, benchmark: Any, cases: Sequence[Any], seeds: Sequence[int] = ()) -> None:
        from relbench.methods.reversion.data import read_exemplar_folder

        _check_prompt_template(settings.prompt_template)
        folders = parse_exemplars(settings.exemplars)
        for relation, folder in folders.items():
            if not Path(folder).expanduser().is_dir():
                raise RelbenchError(f"--set reversion.exemplars: {folder}: folder not found" + ("" if relation == ALL_RELATIONS else f" (relation {relation})"))
        missing = []
        for relation in dict.fromkeys(case.relation for case in cases):
            folder = exemplar_folder(settings, relation)
            if folder is not None:
                read_exemplar_folder(folder, load_images=False)  # layout and descriptions
            elif not _has_reference_images(benchmark, relation):
                missing.append(relation)
        if missing:
            raise RelbenchError(
                f"reversion: no exemplar images for relation(s) {', '.join(missing)}: pass --set reversion.exemplars=DIR "
                f"(DIR/<relation>/ with the images and ReVersion's text.json) or RELATION=DIR, or give the relation "
                f"reference_poses with images in the benchmark"
            )

    def __init__(self, context: RunContext, settings: ReVersionSettings | None = None):
        super().__init__(context, settings)
        from relbench.methods.reversion.models import MODEL_KEY, load_sd15

        _check_prompt_template(self.config.prompt_template)
        if self.config.generation_size < 0 or self.config.generation_size % 8:
            raise RelbenchError(f"--set reversion.generation_size: expected 0 or a multiple of 8, got {self.config.generation_size}")
        parse_exemplars(self.config.exemplars)
        self.model_ref = context.model(MODEL_KEY)
        self.device = context.torch_device()
        self.pipe, self.resolved_revision = load_sd15(self.model_ref, self.config.dtype, self.config.variant, context.seed)
        self.pipe = self.pipe.to(self.device)
        self.benchmark: "Benchmark | None" = None
        self.data_root: Path | None = None
        self.tokens: dict[str, str] = {}  # relation -> its token in the pipeline's tokenizer
        self.trained: dict[str, dict[str, Any]] = {}  # relation -> what its token was trained on

    def use_benchmark(self, benchmark: "Benchmark", data_root: Path) -> None:
        """Called by the runner: relations' reference pose images become exemplars (source 2)."""
        self.benchmark = benchmark
        self.data_root = data_root

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "model": {**self.model_ref.describe(), "resolved_revision": self.resolved_revision},
            "scheduler": type(self.pipe.scheduler).__name__,
            "safety_checker": False,
            "training_recipe": TRAINING_RECIPE,
            "relation_tokens": dict(self.trained),
        }

    # ---------------------------------------------------------------------------------------
    # Relation tokens

    def exemplars(self, relation: str) -> tuple[list["Exemplar"], str]:
        """The relation's exemplars and where they came from."""
        from relbench.methods.reversion.data import read_exemplar_folder, reference_pose_exemplars

        folder = exemplar_folder(self.config, relation)
        if folder is not None:
            return read_exemplar_folder(folder), str(folder)
        if self.benchmark is not None and relation in self.benchmark.relations:
            found = reference_pose_exemplars(self.benchmark.relations[relation], self.data_root or Path("."), self.benchmark.spec_dir)
            if found:
                return found, f"{self.benchmark.label}: relations[{relation}].reference_poses"
        raise RelbenchError(
            f"reversion: no exemplar images for relation {relation!r}: pass --set reversion.exemplars=DIR "
            f"(DIR/{relation}/ with the images and ReVersion's text.json) or {relation}=DIR, or give the relation "
            f"reference_poses with images in the benchmark"
        )

    def training_settings(self) -> dict[str, Any]:
        """Everything that shapes a trained token besides the exemplars (the cache's settings key)."""
        from dataclasses import asdict

        values = asdict(self.config)
        key = {name: values[name] for name in TRAINING_FIELDS}
        key.update(recipe=TRAINING_RECIPE, profile=self.context.profile, model=self.model_ref.describe())
        if self.model_ref.is_tiny:
            key["tiny_seed"] = self.context.seed
        return key

    def trained_embedding(self, relation: str) -> Path:
        """The relation's ``learned_embeds.safetensors``, trained now unless the cache has it."""
        from relbench import trained_cache
        from relbench.methods.reversion.data import exemplars_digest, write_exemplar_folder
        from relbench.hashing import file_sha256
        from relbench.methods.reversion.embeds import EMBEDS_NAME

        exemplars, source = self.exemplars(relation)
        digest = exemplars_digest(exemplars)
        folder = trained_cache.trained_dir(self.name, self.training_settings(), {"relation": relation, "exemplars_sha256": digest})
        if not trained_cache.is_complete(folder):
            with trained_cache.training_lock(folder):
                if not trained_cache.is_complete(folder):  # another process may have finished it meanwhile
                    write_exemplar_folder(exemplars, folder / "exemplars")
                    path = self._train(relation, folder)
                    trained_cache.mark_complete(folder, {
                        "relation": relation, "source": source, "exemplars_sha256": digest, "images": len(exemplars),
                        "embeds_sha256": file_sha256(path), "settings": self.training_settings(),
                    })
        path = folder / EMBEDS_NAME
        self.trained[relation] = {"source": source, "exemplars_sha256": digest, "embeds_sha256": file_sha256(path)}
        return path

    def train_ahead(self, requests: Sequence[GenerationRequest]) -> None:
        """The token of every relation of ``requests`` trained (or found in the cache)."""
        for relation in dict.fromkeys(r.relation_id for r in requests if r.relation_id is not None):
            self.trained_embedding(relation)

    def _train(self, relation: str, folder: Path) -> Path:
        from relbench.methods.reversion import train

        c = self.config
        argv = [
            "--exemplars", str(folder / "exemplars"), "--relation", relation, "--output", str(folder),
            "--profile", self.context.profile, "--device", self.device.type, "--tiny-seed", str(self.context.seed),
            "--max-train-steps", str(c.max_train_steps), "--learning-rate", repr(c.learning_rate),
            "--scale-lr" if c.scale_lr else "--no-scale-lr", "--train-batch-size", str(c.train_batch_size),
            "--gradient-accumulation-steps", str(c.gradient_accumulation_steps), "--resolution", str(c.train_resolution),
            "--initializer-token", c.initializer_token, "--denoise-loss-weight", repr(c.denoise_loss_weight),
            "--steer-loss-weight", repr(c.steer_loss_weight), "--num-positives", str(c.num_positives),
            "--temperature", repr(c.temperature), "--importance-sampling" if c.importance_sampling else "--no-importance-sampling",
            "--scaled-cosine-alpha", repr(c.scaled_cosine_alpha), "--seed", str(c.train_seed),
            "--mixed-precision", c.mixed_precision, "--variant", c.variant,
            # A killed run resumes from its last checkpoint; only the newest is kept.
            "--checkpoints-total-limit", "1", "--resume-from-checkpoint", "latest", "--quiet",
            # The loss history stays in the cache folder's metrics.jsonl; no tracker run per relation.
            "--report-to", "none",
        ]
        for key, value in self.context.model_overrides.items():
            argv += ["--model", f"{key}={value}"]
        path = train.main(argv)
        # The training's own copy of the model is garbage now: give its accelerator memory back.
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return path

    def relation_token(self, relation: str) -> str:
        """The relation's token in the pipeline, loading (and training) it on first need."""
        if relation not in self.tokens:
            path = self.trained_embedding(relation)
            from transformers.utils import logging as transformers_logging

            token = f"<R_{relation}>"
            verbosity = transformers_logging.get_verbosity()
            # Silences "new embeddings will be initialized from a multivariate normal": the new row is set right after.
            transformers_logging.set_verbosity_error()
            try:
                self.pipe.load_textual_inversion(str(path), token=token)
            except (ValueError, RuntimeError) as exc:
                raise RelbenchError(f"{path}: does not fit this text encoder ({' '.join(str(exc).split())[:200]})") from exc
            finally:
                transformers_logging.set_verbosity(verbosity)
            self.tokens[relation] = token
        return self.tokens[relation]

    def prompt(self, request: GenerationRequest) -> str:
        """ReVersion's prompt: the two class nouns around the relation token."""
        if request.relation_id is None:
            raise RelbenchError(f"case {request.case_id}: reversion needs the relation id of every request")
        nouns = [s.class_noun for s in request.subjects]
        return self.config.prompt_template.format(*nouns).replace(RELATION_SLOT, self.relation_token(request.relation_id))

    # ---------------------------------------------------------------------------------------
    # Generation

    def generate(self, requests: Sequence[GenerationRequest]) -> list["Image.Image"]:
        import torch

        for request in requests:
            self.check_request(request)
        sizes = {(r.width, r.height) for r in requests}
        if len(sizes) != 1:
            raise RelbenchError("reversion: all requests of a batch must have the same size")
        width, height = sizes.pop()
        gen_width, gen_height = self._generation_size(width, height)
        prompts = [self.prompt(r) for r in requests]
        # One generator per request: an image depends on its own seed, not on its batch mates.
        generators = [torch.Generator(device=self.device).manual_seed(r.seed) for r in requests]
        output = self.pipe(
            prompt=prompts,
            negative_prompt=[self.config.negative_prompt] * len(requests) if self.config.negative_prompt else None,
            num_inference_steps=self.config.num_inference_steps, guidance_scale=self.config.guidance_scale,
            width=gen_width, height=gen_height, generator=generators, output_type="pil",
        )
        images = [im.convert("RGB") for im in output.images]
        if (gen_width, gen_height) != (width, height):
            from PIL import Image

            images = [im.resize((width, height), Image.Resampling.LANCZOS) for im in images]
        return images

    def _generation_size(self, width: int, height: int) -> tuple[int, int]:
        """The configured side for the longer edge, aspect kept, multiples of 8; 0 = as requested."""
        side = self.config.generation_size
        if side == 0:
            return width, height
        scale = side / max(width, height)
        return max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8)
