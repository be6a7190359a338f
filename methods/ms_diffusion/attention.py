"""Masked decoupled cross-attention of MS-Diffusion, and a store of text attention maps.

How the authors' processor works (MS-Diffusion ``MaskedIPAttnProcessor2_0``, read for facts):

* It replaces every cross-attention (``attn2``) processor of the UNet. The context it receives is
  ``[text (77 tokens); dummy (4 tokens); subject 0 (16 tokens); subject 1 (16); ...]``.
* The query is shared. Text attention uses the layer's own ``to_k`` / ``to_v``; image attention
  uses two extra bias-free projections ``to_k_ip`` / ``to_v_ip`` (context width -> the layer's
  inner width). ``out = to_out(text_attn + scale * image_attn)``.
* Layout mask at each layer's resolution: box ``(x0, y0, x1, y1)`` covers columns
  ``floor(x0 * w) <= c < ceil(x1 * w)`` and rows ``floor(y0 * h) <= r < ceil(y1 * h)``. Subject i's
  tokens get an additive bias of -10000 at positions outside box i; the dummy tokens get -10000
  inside every box (they only take the softmax mass of background positions); after the softmax
  the image attention of background positions (outside every box) is set to zero. Overlapping
  boxes see the tokens of both subjects in one softmax. All-zero boxes (the unconditional branch)
  make every position background, so the image branch adds nothing there.
* Consequence worth knowing: since the background rows are zeroed and the dummy tokens are masked
  everywhere else, the dummy tokens never reach the output; they only keep the background rows of
  the softmax well defined.

Differences from the reference: the layer grid is derived from the latent size (any aspect ratio;
the reference assumed square latents), image attention runs through SDPA with the additive bias
and the background rows are zeroed on the output (the same numbers, without materialising the
probabilities), and box rasterisation is done in float32.

Speed in generation (the same numbers as computing everything at every call): within one pipeline
call the image tokens and the boxes do not change between denoising steps, so a
:class:`LayoutCache` passed as ``ms_cache`` keeps each layer's ``to_k_ip`` / ``to_v_ip``
projections and each layer resolution's masks from the first step (``generate_with_layout`` makes
one per call and clears it after). With it, samples whose boxes are all zero (the unconditional half
of classifier-free guidance) skip the image attention: every position of theirs is background, so
its output is zero anyway. Without a cache (training) every call computes everything for every
sample, as before: finding the samples to skip would cost a device-to-host sync per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor, nn

from relbench.methods.ms_diffusion.config import MSAdapterConfig

MASK_BIAS = -10000.0  # the authors' additive bias for masked positions (finite: fp16-safe)


class AttentionStore:
    """Collects text cross-attention maps (for DreamRelation's relation attention loss).

    ``maps[i]`` is (B, Q, text_tokens): softmax probabilities over the text tokens, averaged over
    heads, of one layer with Q <= ``max_queries`` query positions (32 x 32 by default, as in
    DreamRelation). Maps keep their autograd graph. One map per layer: a layer run again in the
    same step (gradient checkpointing recomputes the forward during backward) replaces its map
    rather than piling up, so memory stays bounded by one step. Call ``clear()`` after every step
    (the reference never cleared its maps).
    """

    def __init__(self, max_queries: int = 1024):
        self.max_queries = max_queries
        self._maps: dict[str, Tensor] = {}  # processor name -> map, in recording order

    @property
    def maps(self) -> list[Tensor]:
        return list(self._maps.values())

    @property
    def names(self) -> list[str]:
        return list(self._maps)

    def wants(self, num_queries: int) -> bool:
        return num_queries <= self.max_queries

    def add(self, name: str, probs: Tensor) -> None:
        self._maps[name] = probs

    def clear(self) -> None:
        self._maps.clear()


def layer_grid(num_queries: int, latent_size: tuple[int, int] | None) -> tuple[int, int]:
    """(rows, cols) of a layer with ``num_queries`` positions, given the latent (height, width).

    Every UNet downsampling is a stride-2 convolution with padding 1: a side s becomes ceil(s / 2).
    Without the latent size, the layer must be square.
    """
    if latent_size is None:
        side = math.isqrt(num_queries)
        if side * side != num_queries:
            raise ValueError(
                f"MS-Diffusion attention: {num_queries} query positions is not a square grid; "
                "pass the latent size (ms_size=(height, width)) for non-square images"
            )
        return side, side
    h, w = int(latent_size[0]), int(latent_size[1])
    while h * w > num_queries and (h > 1 or w > 1):
        h, w = -(-h // 2), -(-w // 2)
    if h * w != num_queries:
        raise ValueError(
            f"MS-Diffusion attention: {num_queries} query positions match no downsampling of the latent size {tuple(latent_size)}"
        )
    return h, w


def box_masks(boxes: Tensor, rows: int, cols: int) -> Tensor:
    """(B, N, 4) normalised xyxy -> (B, rows * cols, N) bool: which positions each box covers."""
    boxes = boxes.float()
    x0, y0 = torch.floor(boxes[..., 0] * cols), torch.floor(boxes[..., 1] * rows)
    x1, y1 = torch.ceil(boxes[..., 2] * cols), torch.ceil(boxes[..., 3] * rows)
    c = torch.arange(cols, device=boxes.device, dtype=torch.float32)
    r = torch.arange(rows, device=boxes.device, dtype=torch.float32)
    in_x = (c >= x0[..., None]) & (c < x1[..., None])  # (B, N, cols)
    in_y = (r >= y0[..., None]) & (r < y1[..., None])  # (B, N, rows)
    inside = in_y[..., :, None] & in_x[..., None, :]  # (B, N, rows, cols), row-major like the UNet tokens
    return inside.flatten(2).transpose(1, 2)


@dataclass(frozen=True)
class LayoutMask:
    """The layout at one layer resolution, for the samples that have image attention at all."""

    active: Tensor | None  # indices of the samples with a non-zero box; None: every sample
    bias: Tensor  # (A, 1, Q, D + N * Qs): 0 where a token may be attended, MASK_BIAS elsewhere
    background: Tensor  # (A, Q, 1): positions outside every box (their image attention is zeroed)


def active_samples(boxes: Tensor) -> Tensor | None:
    """Indices of the samples with some non-zero box coordinate; None when that is every sample.

    All-zero boxes rasterise to no cell at any resolution (floor(0) = ceil(0) = 0), so such a
    sample (the unconditional branch) is background everywhere and its image attention is zero.
    """
    active = boxes.ne(0).flatten(1).any(dim=1)  # (B,)
    return None if bool(active.all()) else torch.nonzero(active).flatten()


def layout_mask(boxes: Tensor, rows: int, cols: int, num_dummy: int, num_queries: int, dtype: torch.dtype,
                skip_unboxed: bool = False) -> LayoutMask:
    """(B, N, 4) boxes -> the additive bias and background of a rows x cols layer (module docstring);
    ``skip_unboxed``: only for the samples with a non-zero box (:func:`active_samples`)."""
    active = active_samples(boxes) if skip_unboxed else None
    if active is not None:
        boxes = boxes.index_select(0, active)
    inside = box_masks(boxes, rows, cols)  # (A, Q, N)
    background = ~inside.any(dim=-1)  # (A, Q)
    allowed = torch.cat(
        [background[..., None].expand(-1, -1, num_dummy), inside.repeat_interleave(num_queries, dim=-1)], dim=-1,
    )  # (A, Q, D + N * Qs)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=boxes.device).masked_fill(~allowed, MASK_BIAS)
    return LayoutMask(active=active, bias=bias[:, None], background=background[..., None])


class LayoutCache:
    """What the masked attention of one pipeline call would otherwise recompute at every step.

    The image tokens and the boxes are the same at every denoising step of one call: each layer's
    projected image keys and values (``to_k_ip`` / ``to_v_ip``, per processor name) and each
    resolution's :class:`LayoutMask` are built at the first step and reused. One cache serves one
    call (one batch of contexts and boxes); ``clear()`` it after so that nothing outlives the call
    (diffusers keeps the call's ``cross_attention_kwargs`` on the pipeline).
    """

    def __init__(self) -> None:
        self._masks: dict[tuple[int, int], LayoutMask] = {}
        self._image_kv: dict[str, tuple[Tensor, Tensor]] = {}
        self._batch: tuple[int, ...] | None = None  # (batch, image tokens) it was filled for

    def check(self, name: str, batch: int, image_tokens: int) -> None:
        """Refuse a cache filled for another batch (one cache must not serve two calls)."""
        shape = (batch, image_tokens)
        if self._batch is None:
            self._batch = shape
        elif self._batch != shape:
            raise ValueError(f"MSAttnProcessor {name}: the LayoutCache was filled for (batch, image tokens) {self._batch}, "
                             f"got {shape}; make one cache per pipeline call")

    def mask(self, rows: int, cols: int, build: Callable[[], LayoutMask]) -> LayoutMask:
        if (rows, cols) not in self._masks:
            self._masks[(rows, cols)] = build()
        return self._masks[(rows, cols)]

    def image_kv(self, name: str, build: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        if name not in self._image_kv:
            self._image_kv[name] = build()
        return self._image_kv[name]

    def clear(self) -> None:
        self._masks.clear()
        self._image_kv.clear()
        self._batch = None

    def __len__(self) -> int:
        return len(self._masks) + len(self._image_kv)


class SelfAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor for ``attn1``, accepting (and ignoring) the MS-Diffusion kwargs.

    The UNet passes ``cross_attention_kwargs`` to every attention layer; without these parameters
    diffusers would log a warning per self-attention layer and step.
    """

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 ms_boxes: Tensor | None = None, ms_scale: float | None = None,
                 ms_store: AttentionStore | None = None, ms_size: tuple[int, int] | None = None,
                 ms_cache: LayoutCache | None = None) -> Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class MSAttnProcessor(nn.Module):
    """Decoupled, layout-masked cross-attention for one ``attn2`` layer.

    Holds only ``to_k_ip`` / ``to_v_ip``; reuses the layer's ``to_q``, ``to_k``, ``to_v`` and
    ``to_out`` (so a LoRA on those applies to the text path and the shared query).
    """

    def __init__(self, hidden_size: int, config: MSAdapterConfig, name: str = ""):
        super().__init__()
        self.to_k_ip = nn.Linear(config.cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(config.cross_attention_dim, hidden_size, bias=False)
        self.text_tokens = config.text_tokens
        self.num_dummy_tokens = config.num_dummy_tokens
        self.num_queries = config.num_queries
        self.scale = config.scale
        self.name = name  # the processor's key in unet.attn_processors

    def __call__(  # type: ignore[override]  # diffusers calls processors directly, not through forward
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        ms_boxes: Tensor | None = None,  # (B, N, 4) normalised xyxy; zeros = unconditional
        ms_scale: float | None = None,  # weight of the image branch (default: config.scale)
        ms_store: AttentionStore | None = None,
        ms_size: tuple[int, int] | None = None,  # latent (height, width): the grid of non-square layers
        ms_cache: LayoutCache | None = None,  # one pipeline call's masks and image keys/values
    ) -> Tensor:
        if encoder_hidden_states is None:
            raise ValueError(f"MSAttnProcessor {self.name}: used on a self-attention layer (no context)")
        if attention_mask is not None:
            raise ValueError(f"MSAttnProcessor {self.name}: encoder attention masks are not supported")
        if attn.norm_q is not None or attn.norm_k is not None:
            raise ValueError(f"MSAttnProcessor {self.name}: query/key normalisation is not supported")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        grid: tuple[int, int] | None = None
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            grid = (height, width)
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)  # (B, Q, C)
        batch, num_queries, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        heads = attn.heads
        query = attn.to_q(hidden_states)  # (B, Q, inner)
        text = encoder_hidden_states[:, : self.text_tokens]  # (B, T, C_ctx)
        image_context = encoder_hidden_states[:, self.text_tokens :]  # (B, D + N * Qs, C_ctx)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        key, value = attn.to_k(text), attn.to_v(text)  # (B, T, inner)
        head_dim = key.shape[-1] // heads
        q = query.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, Q, hd)
        k = key.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, T, hd)
        v = value.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, T, hd)

        if ms_store is not None and ms_store.wants(num_queries):
            # Explicit probabilities, only where they are stored: SDPA does not return them.
            probs = ((q @ k.transpose(-1, -2)) * attn.scale).float().softmax(dim=-1)  # (B, H, Q, T)
            ms_store.add(self.name, probs.mean(dim=1))  # (B, Q, T)
            text_out = probs.to(v.dtype) @ v  # (B, H, Q, hd)
        else:
            text_out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # (B, H, Q, hd)
        out = text_out.transpose(1, 2).reshape(batch, num_queries, heads * head_dim)  # (B, Q, inner)

        if image_context.shape[1] > 0:
            image_out = self._image_attention(attn, q, image_context, ms_boxes, grid or ms_size, num_queries, ms_cache)
            if image_out is not None:
                out = out + (self.scale if ms_scale is None else ms_scale) * image_out

        out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _image_attention(self, attn: Attention, q: Tensor, image_context: Tensor, boxes: Tensor | None,
                         size: tuple[int, int] | None, num_queries: int, cache: LayoutCache | None) -> Tensor | None:
        """Masked attention of the queries (B, H, Q, hd) over dummy + subject tokens -> (B, Q, inner),
        or None when no sample has a box (then the image branch adds nothing)."""
        batch, heads, _, head_dim = q.shape
        n_context = image_context.shape[1] - self.num_dummy_tokens
        if boxes is None:
            raise ValueError(f"MSAttnProcessor {self.name}: the context has image tokens but no ms_boxes were given")
        if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] not in (1, batch):
            raise ValueError(f"MSAttnProcessor {self.name}: ms_boxes must be ({batch}, N, 4), got {tuple(boxes.shape)}")
        num_subjects = boxes.shape[1]
        if n_context != num_subjects * self.num_queries:
            raise ValueError(
                f"MSAttnProcessor {self.name}: context has {image_context.shape[1]} image tokens, expected "
                f"{self.num_dummy_tokens} dummy + {num_subjects} subjects x {self.num_queries}"
            )
        rows, cols = layer_grid(num_queries, size)

        def build_mask() -> LayoutMask:
            expanded = boxes.to(q.device).expand(batch, -1, -1)
            return layout_mask(expanded, rows, cols, self.num_dummy_tokens, self.num_queries, q.dtype, skip_unboxed=cache is not None)

        if cache is None:
            mask = build_mask()
        else:
            cache.check(self.name, batch, image_context.shape[1])
            mask = cache.mask(rows, cols, build_mask)
        if mask.bias.shape[0] == 0:
            return None

        def project() -> tuple[Tensor, Tensor]:
            context = image_context if mask.active is None else image_context.index_select(0, mask.active.to(image_context.device))
            context = context.to(self.to_k_ip.weight.dtype)
            ik = self.to_k_ip(context).to(q.dtype).view(context.shape[0], -1, heads, head_dim).transpose(1, 2)  # (A, H, K, hd)
            iv = self.to_v_ip(context).to(q.dtype).view(context.shape[0], -1, heads, head_dim).transpose(1, 2)  # (A, H, K, hd)
            return ik, iv

        ik, iv = project() if cache is None else cache.image_kv(self.name, project)
        q_active = q if mask.active is None else q.index_select(0, mask.active)
        image_out = F.scaled_dot_product_attention(q_active, ik, iv, attn_mask=mask.bias, scale=attn.scale)  # (A, H, Q, hd)
        image_out = image_out.transpose(1, 2).reshape(-1, num_queries, heads * head_dim).masked_fill(mask.background, 0.0)
        if mask.active is None:
            return image_out  # (B, Q, inner)
        full = image_out.new_zeros(batch, num_queries, heads * head_dim)
        full[mask.active] = image_out  # the samples without boxes: zero, as their background rows would be
        return full
