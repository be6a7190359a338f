"""Profiles and the run context every method and metric is built from.

* ``full``: pretrained models by hub id (HF cache honoured), each overridable by a local path or
  another id with ``--model KEY=ID_OR_PATH[@REVISION]``.
* ``tiny``: every model built from a small config with random weights, seeded, tokenizers from
  the CLIP vocabulary that ships in open-clip-torch; fully offline. Scores are not meaningful.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError
from relbench.registry import unknown_name_message

if TYPE_CHECKING:
    import torch

PROFILES = ("tiny", "full")
DEFAULT_PROFILE = "tiny"  # of every command: evaluate, generate, train (offline, CPU, seconds)


@dataclass(frozen=True)
class ModelRef:
    """Which weights a model key resolves to: a hub id or a local path, plus a revision."""

    key: str
    id: str
    revision: str | None = None

    @property
    def is_tiny(self) -> bool:
        return self.id.startswith("tiny:")

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "revision": self.revision}


# Pretrained defaults of the full profile. Revisions are branch names; the commit actually loaded
# is read back from the HF cache and written into results (see resolved_revision).
FULL_MODELS: dict[str, tuple[str, str | None]] = {
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "main"),
    "clip": ("openai/clip-vit-large-patch14", "main"),
    "dino": ("facebook/dino-vits16", "main"),
    # VLM relation judge (VQAScore-style P(yes), gated questions, CircularEval).
    "judge": ("Qwen/Qwen2.5-VL-7B-Instruct", "main"),
    # Baselines: IP-Adapter (SDXL Plus, ViT-H encoder), OmniGen v1, SD 1.5 (ReVersion's base).
    "ip_adapter": ("h94/IP-Adapter", "main"),
    "omnigen": ("Shitao/OmniGen-v1-diffusers", "main"),
    "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "main"),
    # Open-vocabulary detector that finds each subject by its class noun (identity metrics).
    "detector": ("google/owlv2-base-patch16-ensemble", "main"),
    # Pose estimation: ViTPose++ (dataset_index 0 COCO people, 3 AP-10K animals).
    "pose": ("usyd-community/vitpose-plus-base", "main"),
    # MS-Diffusion's adapter (ms_adapter.bin) and its image encoder, for ms-diffusion / dreamrelation.
    "ms_adapter": ("doge1516/MS-Diffusion", "main"),
    "image_encoder": ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "main"),
}
# Keys without a pretrained default, given only as --model KEY=... (README's models table).
NO_DEFAULT_MODEL_KEYS = ("dense_encoder",)
# Every key --model accepts: a misspelt key (--model sdxxl=...) is refused, never silently unused.
MODEL_KEYS = (*FULL_MODELS, *NO_DEFAULT_MODEL_KEYS)

# What --device accepts; anything else would end in torch's traceback when the first model loads.
# ("cpu:0" is what Accelerate's device is in a multi-process CPU run; trainers pass it on.)
DEVICE_PATTERN = re.compile(r"auto|cpu(:\d+)?|mps|cuda(:\d+)?")


def check_device(device: str) -> None:
    """Refuse a device string torch does not know, or a GPU this machine does not have, in one
    line before anything loads. torch is imported only for a GPU device (it is needed then anyway)."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise RelbenchError(f"--device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
    if device == "auto" or device.startswith("cpu"):
        return
    import torch

    if device == "mps":
        if not torch.backends.mps.is_available():
            raise RelbenchError("--device mps: no Apple GPU is visible (torch.backends.mps.is_available() is False)")
        return
    if not torch.cuda.is_available():
        raise RelbenchError(f"--device {device}: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise RelbenchError(f"--device {device}: {count} CUDA GPU{'s' if count != 1 else ''} visible (cuda:0 to cuda:{count - 1})")


def check_model_keys(keys: Iterable[str], where: str = "--model") -> None:
    """Refuse --model keys no loader reads, with suggestions (``Did you mean 'sdxl'?``)."""
    for key in keys:
        if key not in MODEL_KEYS:
            raise RelbenchError(f"{where} {key}=...: {unknown_name_message('model key', key, list(MODEL_KEYS))}")


@dataclass
class RunContext:
    """Profile, device and model choices shared by every method and metric of a run."""

    profile: str = "tiny"
    device: str = "auto"  # "auto" picks cuda when available
    seed: int = 0  # seeds random weights in the tiny profile
    model_overrides: dict[str, str] = field(default_factory=dict)  # key -> "id_or_path[@revision]"
    # An API judge's transport settings (--judge-option; relation_judge.api.TRANSPORT_OPTIONS):
    # they change how answers are fetched, not what they are, so no run identity includes them.
    judge_options: dict[str, Any] = field(default_factory=dict)
    # --embedder-dtype: the precision of CLIP, DINO and the identity models (PRECISIONS); None:
    # $RELBENCH_EMBEDDER_DTYPE, else float32 (relbench.metrics.embedder.default_precision).
    embedder_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise RelbenchError(f"--profile: unknown profile {self.profile!r}; expected one of {', '.join(PROFILES)}")
        check_device(self.device)
        check_model_keys(self.model_overrides)
        if self.embedder_dtype is not None:
            check_precision(self.embedder_dtype, "--embedder-dtype")

    @property
    def is_tiny(self) -> bool:
        return self.profile == "tiny"

    def torch_device(self) -> "torch.device":
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def model(self, key: str, tiny_id: str | None = None) -> ModelRef:
        """The weights for ``key`` in this profile: an override, the tiny config, or the default."""
        if key in self.model_overrides:
            raw = self.model_overrides[key]
            model_id, _, revision = raw.partition("@") if not Path(raw).exists() else (raw, "", "")
            return ModelRef(key, model_id, revision or None)
        if self.is_tiny:
            return ModelRef(key, tiny_id or f"tiny:{key}", None)
        if key not in FULL_MODELS:
            raise RelbenchError(f"no pretrained default for model {key!r}; pass --model {key}=HUB_ID_OR_PATH")
        model_id, revision = FULL_MODELS[key]
        return ModelRef(key, model_id, revision)


def parse_model_overrides(values: list[str] | None) -> dict[str, str]:
    """``["clip=/models/clip", "sdxl=org/repo@abc123"]`` -> ``{"clip": ..., "sdxl": ...}``."""
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, target = value.partition("=")
        if not sep or not key or not target:
            raise RelbenchError(f"--model {value!r}: expected KEY=HUB_ID_OR_PATH, e.g. clip=/models/clip-vit-large-patch14")
        out[key.strip()] = os.path.expanduser(target.strip())
    return out


def torch_dtype(name: str) -> "torch.dtype":
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise RelbenchError(f"unknown dtype {name!r}; expected one of {', '.join(dtypes)}")
    return dtypes[name]


# Precision of the embedders (CLIP, DINO, the identity models): name -> the weights' dtype. "tf32":
# float32 weights whose float32 matmuls may use TensorFloat-32 (10-bit mantissa inputs) on GPUs
# that have it; no effect on the CPU.
PRECISIONS = {"float32": "float32", "tf32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


PRECISION_ENV_VAR = "RELBENCH_EMBEDDER_DTYPE"


def check_precision(name: str, where: str = "dtype") -> str:
    if name not in PRECISIONS:
        raise RelbenchError(f"{where}: unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")
    return name


def default_precision(context: "RunContext | None" = None) -> str:
    """The precision of embedders built without an explicit dtype: the context's
    ``embedder_dtype`` (``--embedder-dtype``), else ``$RELBENCH_EMBEDDER_DTYPE``, else float32."""
    if context is not None and context.embedder_dtype:
        return context.embedder_dtype
    value = os.environ.get(PRECISION_ENV_VAR, "").strip()
    return check_precision(value, f"${PRECISION_ENV_VAR}") if value else "float32"


def resolved_revision(local_dir: str | os.PathLike[str] | None) -> str | None:
    """The commit hash of a hub snapshot folder or of a path inside one
    (``.../snapshots/<commit>`` or ``.../snapshots/<commit>/unet``); None for anything else."""
    if not local_dir:
        return None
    parts = Path(local_dir).parts
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "snapshots" and len(parts[index + 1]) == 40:
            return parts[index + 1]
    return None


def hub_commit(repo_id: str, filename: str, revision: str | None) -> str | None:
    """The commit of the HF-cache snapshot that a hub file is read from (None: a local folder,
    or not cached)."""
    if Path(repo_id).exists():
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    return resolved_revision(cached) if isinstance(cached, str) else None


def pipeline_revision(pipe: Any) -> str | None:
    """The commit a diffusers pipeline was loaded from. Loaded by hub id, the pipeline's own
    ``_name_or_path`` is the id, but each component's is its folder in the snapshot
    (``.../snapshots/<commit>/unet``); loaded from a snapshot folder, the pipeline's is that."""
    found = resolved_revision(pipe.config.get("_name_or_path"))
    for component in pipe.components.values():
        if found:
            break
        found = resolved_revision(getattr(getattr(component, "config", None), "_name_or_path", None))
    return found
