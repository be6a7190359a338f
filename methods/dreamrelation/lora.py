"""DreamRelation's relation LoRA: rank-4 adapters on the UNet's cross-attention projections.

Only ``attn2.to_q``, ``attn2.to_k``, ``attn2.to_v`` and ``attn2.to_out.0`` get a LoRA (rank 4,
alpha 4, gaussian init), through peft as diffusers' training examples do. Saved as
``pytorch_lora_weights.safetensors`` in diffusers' format (keys ``unet.<module>.lora.down.weight``
/ ``lora.up.weight``), the format of the released DreamRelation LoRAs, so that
``StableDiffusionXLPipeline.load_lora_weights`` reads it. The file's header carries the rank and
alpha as diffusers' LoRA adapter metadata (``lora_adapter_metadata``: ``{"unet.r", "unet.lora_alpha",
"unet.target_modules"}``), which ``load_lora_weights`` turns into the adapter's config: without it
diffusers assumes alpha = rank, and a LoRA trained with ``--lora-alpha 8 --rank 4`` would generate
at half its trained strength. Files without it (the released LoRAs) are read as alpha = rank.

Generation does not keep LoRA layers in the UNet: :func:`read_relation_lora` reads a file's
factors and :func:`fused_lora` merges ``W + lora_scale * alpha / rank * up @ down`` into the UNet's
linear weights for one group of requests (computed in float32, cast to the weights' dtype), then
puts the original weights back bit for bit, so the UNet runs plain linear layers at every step and
the next group (another relation, or no LoRA) starts from the untouched weights. The same numbers as
diffusers' ``load_lora_weights`` + ``set_adapters(adapter_weights=[lora_scale])`` (unfused) within
float tolerance.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.atomic import atomic_save_safetensors
from relbench.errors import RelbenchError

if TYPE_CHECKING:
    import torch
    from diffusers import UNet2DConditionModel

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
TARGET_MODULES = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
ADAPTER_NAME = "relation"
# The safetensors header key diffusers reads LoRA adapter configs from (diffusers.loaders.lora_base).
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"


def add_relation_lora(unet: "UNet2DConditionModel", rank: int = 4, alpha: float = 4.0, seed: int | None = None) -> list["torch.nn.Parameter"]:
    """Attach the trainable LoRA; returns its parameters (everything else stays frozen)."""
    import torch
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(TARGET_MODULES))
    if seed is None:
        unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    params = [p for name, p in unet.named_parameters() if "lora_" in name]
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise RelbenchError("no LoRA parameter was created: the UNet has no attn2.to_q/to_k/to_v/to_out.0 layers")
    return params


def lora_state_dict(unet: "UNet2DConditionModel") -> dict[str, "torch.Tensor"]:
    """The LoRA weights in diffusers' saved format (``unet.``-prefixed, ``lora.down``/``lora.up``)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME))
    return {f"unet.{key}": value.detach().contiguous() for key, value in layers.items()}


def lora_config(unet: "UNet2DConditionModel") -> dict[str, Any]:
    """Rank, alpha and target modules of the UNet's relation adapter."""
    config = unet.peft_config[ADAPTER_NAME]
    return {"r": int(config.r), "lora_alpha": float(config.lora_alpha), "target_modules": sorted(config.target_modules)}


def save_relation_lora(unet: "UNet2DConditionModel", directory: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``<directory>/pytorch_lora_weights.safetensors`` atomically with the adapter config in
    diffusers' metadata (module docstring); returns its path."""
    state = {key: value.to("cpu") for key, value in lora_state_dict(unet).items()}
    # Keys prefixed "unet." as diffusers' SDXL pipeline packs them; it passes the config to LoraConfig(**...).
    adapter = json.dumps({f"unet.{key}": value for key, value in lora_config(unet).items()}, sort_keys=True)
    return atomic_save_safetensors(directory / LORA_WEIGHT_NAME, state, {**(metadata or {}), LORA_ADAPTER_METADATA_KEY: adapter})


def resolve_lora_file(source: str | Path) -> Path:
    """A LoRA file, or a folder holding ``pytorch_lora_weights.safetensors``; clear error otherwise."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / LORA_WEIGHT_NAME
    if not path.is_file():
        raise RelbenchError(f"{path}: LoRA weights not found; expected a .safetensors file or a folder holding {LORA_WEIGHT_NAME}")
    return path


def read_lora_file(path: Path) -> dict[str, "torch.Tensor"]:
    """Load a LoRA safetensors file, refusing truncated files and files that hold no UNet LoRA."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RelbenchError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())[:160]})") from exc
    if not any(key.startswith("unet.") and ".lora" in key for key in state):
        raise RelbenchError(f"{path}: holds no UNet LoRA weights (expected keys like unet.<module>.lora.down.weight)")
    return state


# The LoRA tensor names diffusers reads (its own format, and peft's) and the side of each.
LORA_KEY_SUFFIXES = {".lora.down.weight": "down", ".lora.up.weight": "up", ".lora_A.weight": "down", ".lora_B.weight": "up"}


def check_lora_shapes(path: Path, state: dict[str, "torch.Tensor"], unet: "UNet2DConditionModel") -> None:
    """Refuse a LoRA whose tensors do not fit the UNet's layers before diffusers reads it (it fails
    with logs over many lines, or an IndexError): one line naming the file, the key, the expected
    and the found shape. A linear layer of in x out features takes down (rank, in) and up (out, rank)."""
    modules = dict(unet.named_modules())
    for key in sorted(state):
        suffix = next((s for s in LORA_KEY_SUFFIXES if key.endswith(s)), None)
        if not key.startswith("unet.") or suffix is None:
            continue
        name = key[len("unet."):-len(suffix)]
        if name not in modules:
            raise RelbenchError(f"{path}: {key}: this UNet has no layer {name} (a LoRA of another base model?)")
        layer = getattr(modules[name], "base_layer", modules[name])  # peft wraps a layer holding another LoRA
        if not hasattr(layer, "in_features") or not hasattr(layer, "out_features"):
            continue  # the relation LoRA's targets are linear layers; diffusers checks any other
        down = next((state[f"unet.{name}{s}"] for s, side in LORA_KEY_SUFFIXES.items() if side == "down" and f"unet.{name}{s}" in state), None)
        rank = int(down.shape[0]) if down is not None and down.ndim == 2 else "rank"
        expected = (rank, layer.in_features) if LORA_KEY_SUFFIXES[suffix] == "down" else (layer.out_features, rank)
        found = tuple(int(n) for n in state[key].shape)
        if found != expected:
            shown = ", ".join(str(n) for n in expected)
            raise RelbenchError(f"{path}: {key}: expected shape ({shown}), found {found} (a LoRA of another base model?)")


def read_lora_config(path: Path) -> dict[str, Any] | None:
    """The UNet adapter config (``r``, ``lora_alpha``, ...) stored in a LoRA file's metadata, or
    None when it has none (then, as in diffusers, alpha = rank)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY)
    except (SafetensorError, OSError) as exc:
        raise RelbenchError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())[:160]})") from exc
    if raw is None:
        return None
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RelbenchError(f"{path}: metadata {LORA_ADAPTER_METADATA_KEY} is not valid JSON ({exc.msg})") from exc
    config = {key[len("unet."):]: value for key, value in packed.items() if key.startswith("unet.")} if isinstance(packed, dict) else {}
    if not config:
        return None
    if not isinstance(config.get("r"), int) or not isinstance(config.get("lora_alpha"), (int, float)):
        raise RelbenchError(f"{path}: metadata {LORA_ADAPTER_METADATA_KEY} lacks the UNet's integer r and numeric lora_alpha")
    return config


def lora_rank(state: dict[str, Any]) -> int | None:
    for key, value in state.items():
        if key.endswith("lora.down.weight"):
            return int(value.shape[0])
    return None


@dataclass(frozen=True)
class LoRAFactors:
    """One layer's LoRA: the merged update is ``scaling * up @ down`` (times the LoRA scale)."""

    down: "torch.Tensor"  # (rank, in features)
    up: "torch.Tensor"  # (out features, rank)
    scaling: float  # alpha / rank (alpha / sqrt(rank) for rsLoRA), as peft scales the layer


# Adapter options of a file's metadata that change what the factors mean; refused when set.
UNSUPPORTED_OPTIONS = ("use_dora", "lora_bias", "rank_pattern", "alpha_pattern")


def read_relation_lora(path: Path, unet: "UNet2DConditionModel") -> dict[str, "LoRAFactors"]:
    """A LoRA file's factors per UNet module name, checked against ``unet`` (one line per problem).

    Reads what :func:`save_relation_lora` writes (and peft's ``lora_A``/``lora_B`` names): UNet
    linear layers only. Alpha as diffusers reads it: the metadata's ``lora_alpha``, else alpha = rank.
    """
    import math

    state = read_lora_file(path)
    check_lora_shapes(path, state, unet)
    config = read_lora_config(path)
    if config is not None:
        for option in UNSUPPORTED_OPTIONS:
            if config.get(option):
                raise RelbenchError(f"{path}: metadata {LORA_ADAPTER_METADATA_KEY} sets {option}, which the relation LoRA loader does not support")
    sides: dict[str, dict[str, "torch.Tensor"]] = {}
    for key in sorted(state):
        suffix = next((s for s in LORA_KEY_SUFFIXES if key.endswith(s)), None)
        if not key.startswith("unet.") or suffix is None:
            raise RelbenchError(
                f"{path}: {key}: not a UNet LoRA factor (a relation LoRA holds only unet.<module>.lora.down.weight / "
                ".lora.up.weight, or .lora_A.weight / .lora_B.weight)"
            )
        sides.setdefault(key[len("unet."):-len(suffix)], {})[LORA_KEY_SUFFIXES[suffix]] = state[key]
    modules = dict(unet.named_modules())
    factors: dict[str, LoRAFactors] = {}
    for name, pair in sides.items():
        if set(pair) != {"down", "up"}:
            missing = ({"down", "up"} - set(pair)).pop()
            raise RelbenchError(f"{path}: layer {name} has no {missing} weight")
        layer = getattr(modules[name], "base_layer", modules[name])
        if not hasattr(layer, "in_features") or pair["down"].ndim != 2:
            raise RelbenchError(f"{path}: layer {name} is not a linear layer; a relation LoRA adapts linear projections only")
        rank = int(pair["down"].shape[0])
        if config is None:
            scaling = 1.0  # diffusers without metadata: alpha = rank, W + up @ down
        else:
            if int(config["r"]) != rank:
                raise RelbenchError(f"{path}: layer {name} has rank {rank}, but the metadata says r = {config['r']}")
            alpha = float(config["lora_alpha"])
            scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        factors[name] = LoRAFactors(down=pair["down"], up=pair["up"], scaling=scaling)
    return factors


@contextmanager
def fused_lora(unet: "UNet2DConditionModel", factors: dict[str, LoRAFactors], scale: float) -> Iterator[None]:
    """Within the block, each layer's weight is ``W + scale * scaling * up @ down``; after it (also
    on an error), exactly the weights it had before. Keeps a copy of the adapted weights meanwhile
    (the attn2 projections: about 1.1 GB for SDXL in float16)."""
    import torch

    modules = dict(unet.named_modules())
    saved: list[tuple["torch.Tensor", "torch.Tensor"]] = []
    try:
        with torch.no_grad():
            for name, f in factors.items():
                weight = getattr(modules[name], "base_layer", modules[name]).weight
                saved.append((weight, weight.detach().clone()))
                up = f.up.to(device=weight.device, dtype=torch.float32)
                down = f.down.to(device=weight.device, dtype=torch.float32)
                weight.copy_(weight.float().addmm_(up, down, alpha=scale * f.scaling).to(weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)
