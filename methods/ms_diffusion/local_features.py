"""DreamRelation's local features: dense CLIP features roi-pooled over each subject, 16 tokens per subject.

What the reference (GitHub Shi-qingyu/DreamRelation, ``src/modules/image_encoder.py`` and its
``open_clip`` copy) does, read as facts:

* A second image encoder, a CLIPSelf-distilled OpenCLIP ViT-bigG/14 (width 1664, 48 blocks,
  16 heads, 224 px native), sees each concept image at 896 px (the concept image squashed to
  512 x 512, then a CLIP processor with size and crop 896, OpenAI mean/std). Its 16 x 16
  position embeddings are resized bicubically (align_corners=False) to the 64 x 64 patch grid;
  the class position is kept.
* Dense features, MaskCLIP style: every block but the last runs as usual; in the last block the
  attention is replaced by its value path (``out_proj(v_proj(ln_1(x)))``, no q-k attention), the
  residual and the MLP are kept; then ``ln_post`` on the patch tokens (class token dropped), no
  projection, and an L2 normalisation of each location.
* ``roi_align`` (output 1 x 1, spatial scale 1 on the patch grid, adaptive sampling, aligned)
  over a 4 x 4 grid of pseudo-boxes gives 16 tokens of width 1664, appended to the 257 global
  tokens before the grounding resampler: 273 tokens per subject.

Defect #5 of the reference, fixed here: (a) it passes the pseudo-boxes of *all* images as one
list entry, so ``roi_align`` pools every image's boxes from batch element 0; here every box is
pooled from its own image (explicit batch index). (b) Its pseudo-boxes always tile the whole
concept image; here they tile the subject's extent in its own reference image (the whole image by
default, the mask's bounding box when a mask is given). (c) Its training call passes no dense
input, so training never sees the local tokens and the resampler is never trained on them; here
:meth:`LocalFeatureEncoder.encode` is the one function training and inference call, and the
resampler is trained with them (``--train-resampler``) and stored beside the LoRA
(:func:`save_resampler` / :func:`load_resampler`).

Weights. The CLIPSelf checkpoint is an OpenCLIP training checkpoint, not a transformers model:
convert it once with :func:`convert_open_clip_checkpoint` (a ``.pt`` / ``.safetensors`` file ->
a ``CLIPVisionModelWithProjection`` folder), then pass the folder as ``--model dense_encoder=DIR``.
Any folder that ``CLIPVisionModel.from_pretrained`` loads works (e.g. the plain
``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``, MaskCLIP without the distillation). The tiny
profile uses a seeded 32-wide CLIP vision model at 64 px (an 8 x 8 grid): 17 + 16 tokens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relbench.errors import RelbenchError
from relbench.tiny import seeded

if TYPE_CHECKING:
    from PIL import Image

    from relbench.methods.ms_diffusion.encoders import SubjectEncoder
    from relbench.profiles import RunContext

Box = tuple[float, float, float, float]

GRID = 4  # pseudo-boxes per side: 4 x 4 = 16 local tokens per subject
DENSE_INPUT_SIZE = 896  # the reference's input size for the dense encoder
TINY_DENSE_INPUT_SIZE = 64  # the tiny dense encoder (32 px native, patch 8): an 8 x 8 grid
PRE_RESIZE = 512  # concept images are squashed to 512 x 512 first (as for the global tokens)
MODEL_KEY = "dense_encoder"  # --model dense_encoder=DIR
TINY_ID = "tiny:dense-encoder"
MASK_THRESHOLD = 127  # 8-bit masks: above this is the subject
RESAMPLER_WEIGHT_NAME = "image_proj.safetensors"
_GRID_METADATA = "relbench_local_grid"  # "0": trained without local features


def tiny_dense_model(seed: int = 0) -> nn.Module:
    """A 32-wide, 2-layer CLIP vision model (32 px, patch 8): the tiny image encoder's shape."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4, hidden_act="gelu")
    with seeded(seed):
        return CLIPVisionModel(config).eval()


def _vision_tower(model: nn.Module) -> nn.Module:
    """The module holding embeddings / pre_layrnorm / encoder / post_layernorm."""
    # CLIPVisionModelWithProjection (and CLIPVisionModel of transformers 4.x) wrap it as .vision_model.
    tower = getattr(model, "vision_model", model)
    for name in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm"):
        if not hasattr(tower, name):
            raise RelbenchError(f"dense image encoder: {type(model).__name__} is not a transformers CLIP vision model (no {name})")
    return tower


class DenseImageEncoder:
    """A frozen CLIP vision model read MaskCLIP-style: images -> (M, D, h, w) dense patch features."""

    def __init__(self, model: nn.Module, *, input_size: int = DENSE_INPUT_SIZE, normalize: bool = True,
                 pre_resize: int = PRE_RESIZE, batch_size: int = 4, source: str | None = None):
        from transformers import CLIPImageProcessor

        self.model = model.eval().requires_grad_(False)
        self.tower = _vision_tower(model)
        patch = int(self.tower.config.patch_size)
        if input_size <= 0 or input_size % patch:
            raise RelbenchError(f"dense image encoder: input size {input_size} must be a positive multiple of the patch size {patch}")
        self.input_size = input_size
        self.grid_size = input_size // patch
        self.width = int(self.tower.config.hidden_size)
        # The reference normalises each location (CLIPSelf's dense features are compared by cosine).
        self.normalize = normalize
        self.pre_resize = pre_resize
        self.batch_size = batch_size
        self.source = source
        # As the reference: shortest edge -> input size (bicubic), centre crop (a no-op on the square
        # pre-resized image, so normalised boxes keep their meaning), OpenAI CLIP mean / std.
        self.processor = CLIPImageProcessor(size={"shortest_edge": input_size}, crop_size={"height": input_size, "width": input_size})

    @classmethod
    def from_pretrained(cls, source: str | Path | nn.Module, *, input_size: int = DENSE_INPUT_SIZE, revision: str | None = None,
                        dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "DenseImageEncoder":
        """A CLIP vision model from a folder or hub id (``CLIPVisionModel`` format), or a built module."""
        if isinstance(source, nn.Module):
            model, name = source, getattr(getattr(source, "config", None), "_name_or_path", None)
        else:
            from transformers import CLIPVisionModel

            name = str(source)
            try:
                model, info = CLIPVisionModel.from_pretrained(name, revision=revision, dtype=dtype, output_loading_info=True)
            except (OSError, ValueError) as exc:
                from relbench.errors import exception_line

                raise RelbenchError(
                    f"--model {MODEL_KEY}={name}: cannot load a CLIP vision model ({exception_line(exc, 160)}); "
                    f"expected a CLIPVisionModel folder (convert a CLIPSelf .pt with "
                    f"relbench.methods.ms_diffusion.local_features.convert_open_clip_checkpoint)"
                ) from exc
            missing = sorted(info.get("missing_keys") or ())
            if missing:  # transformers would silently leave these random
                raise RelbenchError(
                    f"--model {MODEL_KEY}={name}: the weights lack {len(missing)} keys of a CLIP vision model, e.g. {missing[0]}"
                )
        model = model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model
        return cls(model, input_size=input_size, source=name)

    @classmethod
    def tiny(cls, seed: int = 0, *, input_size: int = TINY_DENSE_INPUT_SIZE) -> "DenseImageEncoder":
        return cls(tiny_dense_model(seed), input_size=input_size, source=TINY_ID)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "DenseImageEncoder":
        self.model.to(device=device, dtype=dtype)
        return self

    def preprocess(self, images: "Sequence[Image.Image]") -> Tensor:
        """RGB, squashed to ``pre_resize`` square, then the CLIP processor at ``input_size``: (M, 3, S, S)."""
        from PIL import Image

        square = [img.convert("RGB").resize((self.pre_resize, self.pre_resize), Image.Resampling.BICUBIC) for img in images]
        return self.processor(images=square, return_tensors="pt").pixel_values

    @torch.no_grad()
    def dense(self, pixel_values: Tensor) -> Tensor:
        """(M, 3, S, S) -> (M, D, S / patch, S / patch): the last block's value path, then post-LayerNorm."""
        tower = self.tower
        parameter = next(self.model.parameters())
        h = tower.embeddings(pixel_values.to(device=parameter.device, dtype=parameter.dtype), interpolate_pos_encoding=True)
        h = tower.pre_layrnorm(h)
        layers = tower.encoder.layers
        for layer in layers[:-1]:
            h = layer(h, None)
        last = layers[-1]
        # Attention replaced by the value path: as if every token attended only to itself.
        h = h + last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(h)))
        h = h + last.mlp(last.layer_norm2(h))
        patches = tower.post_layernorm(h[:, 1:])  # (M, h*w, D), class token dropped
        if self.normalize:
            patches = F.normalize(patches.float(), dim=-1).to(patches.dtype)
        m, length, width = patches.shape
        side = self.grid_size
        if length != side * side:
            raise ValueError(f"dense image encoder: {length} patch tokens for a {side} x {side} grid")
        return patches.transpose(1, 2).reshape(m, width, side, side)

    def encode(self, images: "Sequence[Image.Image]") -> Tensor:
        """Images -> (M, D, h, w) dense features, ``batch_size`` images per forward pass."""
        chunks = [self.dense(self.preprocess(images[i : i + self.batch_size])) for i in range(0, len(images), self.batch_size)]
        return torch.cat(chunks)


# ---------------------------------------------------------------------------------- roi tokens


def grid_boxes(boxes: Tensor, grid: int = GRID) -> Tensor:
    """(..., 4) xyxy boxes -> (..., grid * grid, 4) cells tiling each box, row-major (y, then x).

    (The reference lists x-major; the resampler's attention has no token positions, so the order
    of the 16 tokens does not change its output.)
    """
    steps = torch.arange(grid + 1, device=boxes.device, dtype=boxes.dtype) / grid
    x0, y0, x1, y1 = boxes.unbind(-1)
    xs = x0[..., None] + (x1 - x0)[..., None] * steps  # (..., grid + 1) cell edges
    ys = y0[..., None] + (y1 - y0)[..., None] * steps
    shape = (*boxes.shape[:-1], grid, grid)
    cells = torch.stack((
        xs[..., None, :-1].expand(shape), ys[..., :-1, None].expand(shape),
        xs[..., None, 1:].expand(shape), ys[..., 1:, None].expand(shape),
    ), dim=-1)  # (..., row, col, 4)
    return cells.reshape(*boxes.shape[:-1], grid * grid, 4)


def roi_tokens(dense: Tensor, boxes: Tensor, grid: int = GRID) -> Tensor:
    """(B, D, h, w) features, (B, N, 4) normalised xyxy boxes of each image -> (B, N, grid*grid, D).

    Each box is split into ``grid x grid`` pseudo-boxes; each pseudo-box is ``roi_align``-ed
    (1 x 1 output) from the features of its OWN image, one token per pseudo-box.
    """
    from torchvision.ops import roi_align

    if dense.dim() != 4 or boxes.dim() != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != dense.shape[0]:
        raise ValueError(f"roi_tokens: expected dense (B, D, h, w) and boxes (B, N, 4), got {tuple(dense.shape)} and {tuple(boxes.shape)}")
    b, n = boxes.shape[:2]
    width, height = dense.shape[-1], dense.shape[-2]
    cells = grid_boxes(boxes.to(device=dense.device, dtype=torch.float32), grid)  # (B, N, G2, 4)
    scale = torch.tensor([width, height, width, height], device=dense.device, dtype=torch.float32)
    cells = (cells * scale).reshape(b, -1, 4)  # on the feature grid, cell i spans [i, i + 1]
    # The batch index of every pseudo-box is its own image (the reference's bug pooled all from 0).
    index = torch.arange(b, device=dense.device, dtype=torch.float32)[:, None, None].expand(b, cells.shape[1], 1)
    rois = torch.cat((index, cells), dim=-1).reshape(-1, 5)
    # float32: roi_align has no half-precision CPU kernel, and the average is better in float32.
    pooled = roi_align(dense.float(), rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return pooled[:, :, 0, 0].reshape(b, n, grid * grid, -1).to(dense.dtype)


def mask_box(mask: "Image.Image | np.ndarray", what: str = "mask") -> Box:
    """Normalised xyxy bounding box (pixel edges) of a mask's foreground (grey > 127, or True)."""
    array = np.asarray(mask.convert("L")) > MASK_THRESHOLD if hasattr(mask, "convert") else np.asarray(mask)
    if np.issubdtype(array.dtype, np.floating):  # 0..1 soft masks
        array = array > 0.5
    elif array.dtype != bool:
        array = array > MASK_THRESHOLD
    if array.ndim != 2:
        raise RelbenchError(f"{what}: expected a single-channel mask, got shape {array.shape}")
    ys, xs = np.nonzero(array)
    if len(xs) == 0:
        raise RelbenchError(f"{what}: mask is empty; expected the subject's pixels to be white")
    height, width = array.shape
    return (xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height)


def subject_boxes(images: "Sequence[Sequence[Image.Image]]",
                  masks: "Sequence[Sequence[Image.Image | np.ndarray | None]] | None" = None) -> list[list[Box]]:
    """Each subject's extent in its own reference image: the whole image, or its mask's box."""
    out: list[list[Box]] = []
    for b, row in enumerate(images):
        mask_row = masks[b] if masks is not None else [None] * len(row)
        if len(mask_row) != len(row):
            raise RelbenchError(f"local features: masks[{b}] has {len(mask_row)} entries for {len(row)} subject images")
        boxes: list[Box] = []
        for n, (image, mask) in enumerate(zip(row, mask_row)):
            if mask is None:
                boxes.append((0.0, 0.0, 1.0, 1.0))
                continue
            size = mask.size if hasattr(mask, "convert") else tuple(np.asarray(mask).shape[1::-1])
            if tuple(size) != tuple(image.size):
                raise RelbenchError(f"local features: masks[{b}][{n}] is {size[0]}x{size[1]} but its image is {image.size[0]}x{image.size[1]}")
            boxes.append(mask_box(mask, f"local features: masks[{b}][{n}]"))
        out.append(boxes)
    return out


def _box_tensor(boxes: "Sequence[Sequence[Box]] | Tensor | None", b: int, n: int) -> Tensor:
    if boxes is None:
        return torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(b, n, 4).clone()
    tensor = torch.as_tensor(boxes, dtype=torch.float32) if not isinstance(boxes, Tensor) else boxes.detach().float().cpu()
    if tuple(tensor.shape) != (b, n, 4):
        raise RelbenchError(f"local features: boxes must be one xyxy box per subject image, shape ({b}, {n}, 4); got {tuple(tensor.shape)}")
    x0, y0, x1, y1 = tensor.unbind(-1)
    bad = ~((0 <= x0) & (x0 < x1) & (x1 <= 1) & (0 <= y0) & (y0 < y1) & (y1 <= 1))
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise RelbenchError(f"local features: boxes[{i}][{j}]: expected 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {tensor[i, j].tolist()}")
    return tensor


class LocalFeatureEncoder:
    """Global CLIP tokens + ``grid * grid`` local tokens per subject; a drop-in for ``SubjectEncoder``.

    ``encode_images`` / ``encode_phrases`` have ``SubjectEncoder``'s signatures, so the training
    cache and ``generate_with_layout`` take either; both then call this one ``encode``.
    """

    def __init__(self, subject_encoder: "SubjectEncoder", dense_encoder: DenseImageEncoder, grid: int = GRID):
        global_width = getattr(getattr(subject_encoder.image_encoder, "config", None), "hidden_size", None)
        if global_width is not None and global_width != dense_encoder.width:
            raise RelbenchError(
                f"local features: the dense encoder ({dense_encoder.source}) is {dense_encoder.width} wide but the image encoder "
                f"is {global_width} wide; both must be the same CLIP width (ViT-bigG/14: 1664)"
            )
        if grid < 1:
            raise RelbenchError(f"local features: grid must be a positive integer, got {grid}")
        self.subject = subject_encoder
        self.dense = dense_encoder
        self.grid = grid

    @property
    def local_tokens(self) -> int:
        return self.grid * self.grid

    @torch.no_grad()
    def encode(self, images: "list[list[Image.Image]]", boxes: "Sequence[Sequence[Box]] | Tensor | None" = None) -> Tensor:
        """Reference images per prompt and subject (+ each subject's box in its own image, default the
        whole image) -> (B, N, L + grid*grid, D): the L global tokens, then the local tokens."""
        b, n = self.subject._counts(images, "subject images")
        box_tensor = _box_tensor(boxes, b, n)
        global_tokens = self.subject.encode_images(images)  # (B, N, L, D)
        dense = self.dense.encode([img for row in images for img in row])  # (B*N, D, h, w)
        local = roi_tokens(dense, box_tensor.reshape(b * n, 1, 4), self.grid)  # (B*N, 1, G2, D)
        local = local.reshape(b, n, self.local_tokens, -1).to(device=global_tokens.device, dtype=global_tokens.dtype)
        return torch.cat((global_tokens, local), dim=2)

    def encode_images(self, images: "list[list[Image.Image]]", boxes: "Sequence[Sequence[Box]] | Tensor | None" = None) -> Tensor:
        return self.encode(images, boxes)

    def encode_phrases(self, phrases: list[list[str]]) -> Tensor:
        return self.subject.encode_phrases(phrases)


def dense_encoder_for(context: "RunContext", *, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> DenseImageEncoder:
    """The profile's dense encoder: tiny (seeded) or ``--model dense_encoder=DIR`` (no public default)."""
    if not context.is_tiny and MODEL_KEY not in context.model_overrides:
        raise RelbenchError(
            f"--local-features needs a dense image encoder: pass --model {MODEL_KEY}=DIR, a CLIPVisionModel folder "
            f"(the CLIPSelf ViT-bigG/14 converted with convert_open_clip_checkpoint)"
        )
    ref = context.model(MODEL_KEY, tiny_id=TINY_ID)
    if ref.is_tiny:
        return DenseImageEncoder.tiny(seed=context.seed + 3).to(device=device, dtype=dtype)
    from relbench.models_manifest import require_cached_ref

    require_cached_ref(MODEL_KEY, ref.id, ref.revision)
    return DenseImageEncoder.from_pretrained(ref.id, revision=ref.revision, device=device, dtype=dtype)


# -------------------------------------------------------------------- the trained resampler


def save_resampler(resampler: nn.Module, folder: Path, local_grid: int | None, metadata: Mapping[str, str] | None = None) -> Path:
    """Write the resampler's state dict beside the LoRA, recording the local grid it was trained with."""
    from relbench.atomic import atomic_save_safetensors

    state = {k: v.detach().cpu().contiguous() for k, v in resampler.state_dict().items()}
    return atomic_save_safetensors(folder / RESAMPLER_WEIGHT_NAME, state,
                                   metadata={**(metadata or {}), _GRID_METADATA: str(local_grid or 0)})


def load_resampler(resampler: nn.Module, path: Path, local_grid: int | None) -> None:
    """Load a trained resampler, refusing one trained with other local features (or none)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise RelbenchError(f"{path}: no trained resampler; a LoRA trained with --train-resampler has {RESAMPLER_WEIGHT_NAME} beside it")
    with safe_open(str(path), framework="pt") as handle:
        trained_grid = int((handle.metadata() or {}).get(_GRID_METADATA, "0"))
    if trained_grid != (local_grid or 0):
        def describe(g: int) -> str:
            return f"{g}x{g} local features" if g else "no local features"

        raise RelbenchError(f"{path}: trained with {describe(trained_grid)} but used with {describe(local_grid or 0)}")
    state = load_file(str(path))
    expected = {k: tuple(v.shape) for k, v in resampler.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        wrong = sorted(set(expected) ^ set(got)) or sorted(k for k in expected if expected[k] != got[k])
        raise RelbenchError(f"{path}: not this resampler's weights (key {wrong[0]}: expected {expected.get(wrong[0])}, got {got.get(wrong[0])})")
    resampler.load_state_dict(state)


# ------------------------------------------------------------------ OpenCLIP -> transformers


_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_BLOCK_KEYS = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP_KEYS = {
    "conv1.weight": "embeddings.patch_embedding.weight", "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias",
}


def convert_open_clip_vision(checkpoint: Mapping[str, Any], *, num_heads: int = 16, hidden_act: str = "gelu",
                             what: str = "checkpoint") -> tuple[Any, dict[str, Tensor]]:
    """An OpenCLIP (CLIPSelf) state dict -> (CLIPVisionConfig, ``CLIPVisionModelWithProjection`` state dict).

    Accepts a training checkpoint (``{"state_dict": ...}``, ``module.`` prefixes) or a bare
    state dict; only ``visual.*`` is used. The head count is not in the weights: ViT-bigG/14 has
    16 (width 1664, 104 per head). ``hidden_act`` is "gelu" for OpenCLIP-trained towers, "quick_gelu"
    for OpenAI's. Plain pre-LN blocks only: LayerScale, attention pooling and the like are refused.
    """
    from transformers import CLIPVisionConfig

    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise RelbenchError(f"{what}: not a state dict")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    missing = [k for k in _TOP_KEYS if k not in state]
    if missing:
        raise RelbenchError(f"{what}: no OpenCLIP vision tower (missing visual.{missing[0]})")
    out: dict[str, Tensor] = {}
    blocks: set[int] = set()
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise RelbenchError(f"{what}: visual.{key} is not a tensor")
        match = _BLOCK.fullmatch(key)
        if key in _TOP_KEYS:
            out[f"vision_model.{_TOP_KEYS[key]}"] = value
        elif key == "proj":  # used as x @ proj: a Linear weight is its transpose
            out["visual_projection.weight"] = value.t().contiguous()
        elif match and match.group(2) in _BLOCK_KEYS:
            blocks.add(int(match.group(1)))
            out[f"vision_model.encoder.layers.{match.group(1)}.{_BLOCK_KEYS[match.group(2)]}"] = value
        elif match and match.group(2) in ("attn.in_proj_weight", "attn.in_proj_bias"):
            blocks.add(int(match.group(1)))
            kind = "weight" if key.endswith("weight") else "bias"
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):  # packed q, k, v
                out[f"vision_model.encoder.layers.{match.group(1)}.self_attn.{name}.{kind}"] = part.contiguous()
        else:
            raise RelbenchError(f"{what}: visual.{key} has no counterpart in a transformers CLIP vision model")
    width, _, patch, _ = state["conv1.weight"].shape
    positions = state["positional_embedding"].shape[0]
    side = math.isqrt(positions - 1)
    if side * side != positions - 1 or width % num_heads or blocks != set(range(len(blocks))):
        raise RelbenchError(
            f"{what}: unexpected vision tower shape (width {width}, {positions} positions, {num_heads} heads, {len(blocks)} blocks)"
        )
    config = CLIPVisionConfig(
        hidden_size=width, intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=len(blocks), num_attention_heads=num_heads, patch_size=patch, image_size=side * patch,
        projection_dim=state["proj"].shape[1] if "proj" in state else width, hidden_act=hidden_act, layer_norm_eps=1e-5,
    )
    return config, out


def convert_open_clip_checkpoint(path: str | Path, out_dir: str | Path, *, num_heads: int = 16, hidden_act: str = "gelu") -> Path:
    """Convert a CLIPSelf / OpenCLIP checkpoint file into a folder for ``--model dense_encoder=DIR``.

    E.g. ``python -c "from relbench.methods.ms_diffusion.local_features import convert_open_clip_checkpoint as c;
    c('checkpoints/local_image_encoder/epoch_6.pt', 'models/clipself-vit-bigg-14')"``.
    """
    from transformers import CLIPVisionModelWithProjection

    path, out_dir = Path(path), Path(out_dir)
    if not path.is_file():
        raise RelbenchError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        checkpoint: Any = load_file(str(path))
    else:
        try:
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors come in many types
            raise RelbenchError(f"{path}: cannot read as a weights-only torch checkpoint ({' '.join(str(exc).split())[:160]})") from exc
    config, state = convert_open_clip_vision(checkpoint, num_heads=num_heads, hidden_act=hidden_act, what=str(path))
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    if "visual_projection.weight" not in state:  # no projection in the checkpoint: identity (unused by dense features)
        state["visual_projection.weight"] = torch.eye(config.hidden_size, dtype=state["vision_model.pre_layrnorm.weight"].dtype)
    # strict: every weight of the model, and only those, must come from the checkpoint.
    model.load_state_dict(state, strict=True, assign=True)
    model.save_pretrained(str(out_dir))
    return out_dir
