"""The MS-Diffusion adapter: resampler, per-layer image projections and dummy tokens; public weights.

The public checkpoint (``doge1516/MS-Diffusion``, ``ms_adapter.bin``) is a ``torch.save`` of a
dict with three entries (as the authors' ``save_to_checkpoint`` writes it):

* ``image_proj``: the grounding resampler's state dict (see :mod:`.resampler` for key names);
* ``ms_adapter``: the state dict of a ``ModuleList`` over *all* of ``unet.attn_processors``
  in their order, where only the cross-attention entries have weights. Keys are therefore
  ``"<index>.to_k_ip.weight"`` / ``"<index>.to_v_ip.weight"`` with odd indices for SDXL
  (each transformer block has attn1 then attn2): 70 attn2 layers -> indices 1, 3, ..., 139, shape
  ``(inner width of the layer, 2048)``. The UNet's processor order is down blocks, up blocks, then
  the mid block (module registration order), which decides which index has which width;
* ``dummy_image_tokens``: a (1, 4, 2048) tensor.

``MSAdapter.state_dict()`` is the same content flattened (``image_proj.<key>``,
``ms_adapter.<index>.to_k_ip.weight``, ``dummy_image_tokens``); that flat form is what a
``.safetensors`` file holds. Loading is strict: every key, and only those, with the right shapes.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from relbench.atomic import atomic_path, atomic_save_safetensors
from relbench.errors import RelbenchError
from relbench.methods.ms_diffusion.attention import AttentionStore, LayoutCache, MSAttnProcessor, SelfAttnProcessor
from relbench.methods.ms_diffusion.config import MSAdapterConfig
from relbench.methods.ms_diffusion.resampler import GroundingResampler

DEFAULT_HUB_ID = "doge1516/MS-Diffusion"
WEIGHT_NAME = "ms_adapter.bin"
PARTS = ("image_proj", "ms_adapter", "dummy_image_tokens")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    from relbench.errors import shorten

    return shorten(str(exc), limit)


def _shape(shape: Any) -> str:
    return str(tuple(shape))


def cross_attention_layers(unet: nn.Module) -> list[tuple[int, str, nn.Module]]:
    """(index in ``unet.attn_processors`` order, processor name, Attention) of every ``attn2``."""
    modules = dict(unet.named_modules())
    return [
        (index, name, modules[name.removesuffix(".processor")])
        for index, name in enumerate(unet.attn_processors)
        if name.endswith("attn2.processor")
    ]


class MSAdapter(nn.Module):
    """Grounding resampler + ``to_k_ip`` / ``to_v_ip`` of every ``attn2`` + dummy image tokens."""

    def __init__(self, config: MSAdapterConfig, unet: nn.Module):
        super().__init__()
        unet_dim = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
        if unet_dim is not None and unet_dim != config.cross_attention_dim:
            raise RelbenchError(
                f"MS-Diffusion adapter: config cross_attention_dim {config.cross_attention_dim} does not match "
                f"the UNet's {unet_dim} (use MSAdapterConfig.sdxl() for SDXL, .tiny() for the tiny UNet)"
            )
        layers = cross_attention_layers(unet)
        if not layers:
            raise ValueError("MS-Diffusion adapter: the UNet has no cross-attention (attn2) layers")
        self.config = config
        self.image_proj = GroundingResampler(config)
        # Keyed by the processor's index in unet.attn_processors: the public file's key names.
        self.ms_adapter = nn.ModuleDict(
            {str(index): MSAttnProcessor(attn.inner_kv_dim, config, name=name) for index, name, attn in layers}
        )
        self.dummy_image_tokens = nn.Parameter(torch.randn(1, config.num_dummy_tokens, config.cross_attention_dim))
        self.loaded_from: dict[str, Any] | None = None  # where from_pretrained read the weights

    # ----------------------------------------------------------------------------- UNet wiring
    def processors(self) -> list[MSAttnProcessor]:
        return [p for p in self.ms_adapter.values() if isinstance(p, MSAttnProcessor)]

    def install(self, unet: nn.Module) -> None:
        """Set our processor on every ``attn2`` of ``unet`` and diffusers' SDPA one on the rest."""
        ours = {p.name: p for p in self.processors()}
        names = list(unet.attn_processors)
        cross = {n for n in names if n.endswith("attn2.processor")}
        if cross != set(ours):
            raise ValueError("MS-Diffusion adapter: this UNet's cross-attention layers differ from the ones the adapter was built for")
        unet.set_attn_processor({n: ours[n] if n in ours else SelfAttnProcessor() for n in names})

    def is_installed(self, unet: nn.Module) -> bool:
        current = unet.attn_processors
        return all(current.get(p.name) is p for p in self.processors())

    def cross_attention_kwargs(self, boxes: Tensor, *, scale: float | None = None,
                               latent_size: tuple[int, int] | None = None,
                               store: AttentionStore | None = None,
                               cache: LayoutCache | None = None) -> dict[str, Any]:
        """The UNet's ``cross_attention_kwargs`` for (B, N, 4) boxes (B = the UNet's batch).

        ``cache``: one pipeline call's :class:`LayoutCache` (context and boxes fixed for the call)."""
        return {"ms_boxes": boxes, "ms_scale": scale, "ms_size": latent_size, "ms_store": store, "ms_cache": cache}

    # ------------------------------------------------------------------------------- context
    def image_context(self, image_embeds: Tensor, phrase_embeds: Tensor, boxes: Tensor,
                      drop_grounding: Tensor | None = None) -> Tensor:
        """(B, N, L, E), (B, N, P), (B, N, 4) -> (B, num_dummy + N * Q, C): dummy tokens, then subjects."""
        c = self.config
        if image_embeds.ndim != 4 or image_embeds.shape[-1] != c.image_embed_dim:
            raise ValueError(f"MS-Diffusion adapter: image_embeds must be (B, N, L, {c.image_embed_dim}), got {tuple(image_embeds.shape)}")
        if phrase_embeds.ndim != 3 or phrase_embeds.shape[-1] != c.phrase_embed_dim:
            raise ValueError(f"MS-Diffusion adapter: phrase_embeds must be (B, N, {c.phrase_embed_dim}), got {tuple(phrase_embeds.shape)}")
        dtype = self.dummy_image_tokens.dtype
        subjects = self.image_proj(image_embeds.to(dtype), phrase_embeds.to(dtype), boxes.to(dtype), drop_grounding)
        dummy = self.dummy_image_tokens.expand(image_embeds.shape[0], -1, -1)
        return torch.cat([dummy, subjects], dim=1)

    # ------------------------------------------------------------------------------- weights
    def public_state_dict(self) -> dict[str, Any]:
        """The public file's layout: ``{"image_proj": ..., "ms_adapter": ..., "dummy_image_tokens": ...}``."""
        return {
            "image_proj": self.image_proj.state_dict(),
            "ms_adapter": self.ms_adapter.state_dict(),
            "dummy_image_tokens": self.dummy_image_tokens.detach(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the public layout: nested ``torch.save`` dict (.bin), or flat keys (.safetensors)."""
        path = Path(path)
        if path.suffix == ".safetensors":
            return atomic_save_safetensors(path, {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()})
        with atomic_path(path) as tmp:
            torch.save({part: _cpu(value) for part, value in self.public_state_dict().items()}, tmp)
        return path

    @classmethod
    def from_pretrained(cls, source: str | Path | Mapping[str, Any], config: MSAdapterConfig | None, unet: nn.Module, *,
                        weight_name: str = WEIGHT_NAME, subfolder: str | None = None,
                        revision: str | None = None) -> "MSAdapter":
        """Load public-format weights from a hub id, a file, a folder or an in-memory dict.

        ``config`` None: the sizes are read from the weights (:func:`config_from_state`).
        The adapter ends on the UNet's device and dtype, not installed (call ``install(unet)``).
        """
        state, label, provenance = _read_state(source, weight_name, subfolder, revision)
        flat = _flatten(state, label)
        config = config or config_from_state(flat, label)
        with torch.device("meta"):  # no memory and no random init for weights about to be replaced
            adapter = cls(config, unet)
        _check_state(flat, adapter.state_dict(), label)
        if isinstance(source, Mapping):
            flat = {k: v.detach().clone() for k, v in flat.items()}  # never alias the caller's tensors
        adapter.load_state_dict(flat, strict=True, assign=True)
        device, dtype = _device_dtype(unet)
        adapter.to(device=device, dtype=dtype)
        adapter.loaded_from = provenance
        return adapter


def _cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    return {k: v.detach().cpu() for k, v in value.items()}


def _device_dtype(unet: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(unet.parameters())
    return parameter.device, parameter.dtype


def _snapshot_commit(path: Path) -> str | None:
    parts = path.parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and len(parts[i + 1]) == 40:
            return parts[i + 1]
    return None


def _read_state(source: str | Path | Mapping[str, Any], weight_name: str, subfolder: str | None,
                revision: str | None) -> tuple[Mapping[str, Any], str, dict[str, Any]]:
    """(state dict, label for messages, provenance) of a source."""
    if isinstance(source, Mapping):
        return source, "MS-Diffusion state dict", {"id": "<state dict>", "file": None, "revision": None, "resolved_revision": None}
    text = str(source)
    path = Path(text).expanduser()
    relative = f"{subfolder}/{weight_name}" if subfolder else weight_name
    if path.is_dir():
        file = path / relative
        if not file.is_file():
            raise RelbenchError(f"{path}: no {relative} in this folder (expected the MS-Diffusion adapter weights)")
    elif path.is_file():
        file = path
    elif _HUB_ID.fullmatch(text) and not text.startswith((".", "~")):
        file = _download(text, weight_name, subfolder, revision)
    else:
        raise RelbenchError(f"{text}: no such file or folder (expected {weight_name}, a folder holding it, or a hub id like {DEFAULT_HUB_ID})")
    provenance = {"id": text, "file": str(file), "revision": revision, "resolved_revision": _snapshot_commit(file)}
    return _load_file(file), str(file), provenance


def _download(repo_id: str, weight_name: str, subfolder: str | None, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, weight_name, subfolder=subfolder, revision=revision))
    except (OSError, ValueError) as exc:  # offline cache misses, missing repos/files, HTTP errors
        at = f"@{revision}" if revision else ""
        from relbench.models_manifest import fix_hint

        raise RelbenchError(
            f"cannot get {weight_name} from hub repo {repo_id}{at} ({type(exc).__name__}: {_one_line(exc, 160)}); "
            f"{fix_hint('ms_adapter', repo_id)}"
        ) from exc


def _load_file(file: Path) -> Mapping[str, Any]:
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise RelbenchError(f"{file}: cannot read this safetensors file ({_one_line(exc)})") from exc
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RelbenchError(
            f"{file}: refused: the file holds Python objects other than tensors, and only weights are loaded "
            f"(torch.load weights_only=True: {_one_line(exc, 120)})"
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise RelbenchError(f"{file}: cannot read this torch file; is it complete? ({_one_line(exc)})") from exc


def _flatten(state: Any, label: str) -> dict[str, Tensor]:
    """Public nested layout (or the already-flat one) -> ``MSAdapter.state_dict()`` keys."""
    if not isinstance(state, Mapping):
        raise RelbenchError(f"{label}: not an MS-Diffusion adapter file: expected a dict with keys {', '.join(PARTS)}, got {type(state).__name__}")
    nested = any(part in state for part in ("image_proj", "ms_adapter"))
    if not nested:
        flat = dict(state)
    else:
        flat = {}
        for part in PARTS:
            if part not in state:
                raise RelbenchError(f"{label}: missing top-level key {part!r} (an MS-Diffusion adapter file has {', '.join(PARTS)})")
        extra = sorted(str(k) for k in state if k not in PARTS)
        if extra:
            raise RelbenchError(f"{label}: unexpected top-level key {extra[0]!r} (an MS-Diffusion adapter file has only {', '.join(PARTS)})")
        for part in ("image_proj", "ms_adapter"):
            if not isinstance(state[part], Mapping):
                raise RelbenchError(f"{label}: {part!r} must be a state dict, got {type(state[part]).__name__}")
            flat.update({f"{part}.{key}": value for key, value in state[part].items()})
        flat["dummy_image_tokens"] = state["dummy_image_tokens"]
    for key, value in flat.items():
        if not isinstance(value, Tensor):
            raise RelbenchError(f"{label}: {key!r} must be a tensor, got {type(value).__name__}")
    return flat


def config_from_state(flat: Mapping[str, Tensor], label: str) -> MSAdapterConfig:
    """The adapter's sizes read from its (flat) weights; what the file does not hold keeps the
    public SDXL value: 64-wide heads (the head count is the query width / 64, as diffusers reads
    IP-Adapter files), 8 Fourier frequencies, 77 text tokens, 257 image tokens, scale 0.6."""
    defaults = MSAdapterConfig.sdxl()

    def shape(key: str) -> tuple[int, ...]:
        if key not in flat:
            raise RelbenchError(f"{label}: missing key {key!r}; is it an MS-Diffusion adapter file?")
        return tuple(flat[key].shape)

    dim, image_embed_dim = shape("image_proj.proj_in.weight")
    grounding = shape("image_proj.latent_proj.0.weight")[1]
    depth = len({key.split(".")[2] for key in flat if key.startswith("image_proj.layers.")})
    inner = shape("image_proj.layers.0.0.to_q.weight")[0]
    if inner % defaults.dim_head:
        raise RelbenchError(f"{label}: resampler query width {inner} is not a multiple of {defaults.dim_head}-wide heads")
    return MSAdapterConfig(
        cross_attention_dim=shape("image_proj.proj_out.weight")[0], image_embed_dim=image_embed_dim,
        image_tokens=defaults.image_tokens, phrase_embed_dim=grounding - defaults.fourier_freqs * 2 * 4,
        resampler_dim=dim, depth=depth, dim_head=defaults.dim_head, heads=inner // defaults.dim_head,
        num_queries=shape("image_proj.latent_proj.2.weight")[0] // dim,
        ff_mult=shape("image_proj.layers.0.1.1.weight")[0] // dim, fourier_freqs=defaults.fourier_freqs,
        num_dummy_tokens=shape("dummy_image_tokens")[1], text_tokens=defaults.text_tokens, scale=defaults.scale,
    )


def _check_state(flat: Mapping[str, Tensor], expected: Mapping[str, Tensor], label: str) -> None:
    missing = [k for k in expected if k not in flat]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RelbenchError(f"{label}: missing key {missing[0]!r} of shape {_shape(expected[missing[0]].shape)}{more}; is it an MS-Diffusion adapter for this UNet?")
    unexpected = [k for k in flat if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise RelbenchError(f"{label}: unexpected key {unexpected[0]!r}{more}; is it an MS-Diffusion adapter for this UNet?")
    for key, reference in expected.items():
        if tuple(flat[key].shape) != tuple(reference.shape):
            raise RelbenchError(
                f"{label}: {key!r} has shape {_shape(flat[key].shape)}, expected {_shape(reference.shape)} "
                "(the adapter config and UNet must match the file)"
            )
