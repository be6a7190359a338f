"""DreamRelation's training losses, as pure functions over tensors.

    total = w_diff * MSE(eps_pred, eps) + w_kml * KML * [t <= 333] + w_attn * L_attn

with the paper's weights 1.0, 0.1 and 0.001 (DDPM, 1000 training steps). Compared with the
reference training script, this module fixes:

- the t <= 333 gate is a per-sample mask, not a Python ``if`` on the batch (which only works at
  batch size 1);
- keypoints are sampled bilinearly (``grid_sample``) after clamping to [0, 1], not by integer
  truncation that indexes out of range at x = 1.0; the concept target is the mean of the VAE latent
  distribution, not a sample of it;
- N subjects and K keypoints, with per-keypoint visibility, instead of 2 x 17 hard-coded;
- attention maps are kept for one step and handed over with ``take()``, which empties the store;
- every term is explicit: enabled terms are computed and logged, a disabled one is logged as
  disabled, never skipped in silence.

Batch reduction: every term is a per-sample value averaged over the whole batch (denominator B),
as the diffusion MSE is. A sample that a gate or mask excludes contributes 0 to that mean. So a
batch of B equals B batch-1 steps with gradient accumulation (the reference recipe), and the
gradient a sample receives never depends on the timesteps or visibility of the other samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from relbench.errors import RelbenchError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Paper: KML only on the less noisy third of the 1000 DDPM steps, where x0_pred is reliable.
KML_MAX_TIMESTEP = 333
# L_attn divides each region's attention by its area plus this (the reference's constant).
ATTN_AREA_EPS = 1e-5
# CLIP BPE marks the last token of every word with this suffix.
_CLIP_WORD_END = "</w>"


def _check_shape(name: str, tensor: Tensor, shape: Sequence[int | None]) -> None:
    """Programmer errors (wrong wiring), not user mistakes: a ValueError with both shapes."""
    if tensor.dim() != len(shape) or any(want is not None and got != want for got, want in zip(tensor.shape, shape)):
        expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(tensor.shape)}")


def _float32_or_wider(tensor: Tensor) -> Tensor:
    """Loss arithmetic in float32 at least (fp16 activations under AMP); float64 stays float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _stat(value: Tensor | float) -> Tensor:
    """A logged value: a detached float32 scalar tensor."""
    if isinstance(value, Tensor):
        return value.detach().float().reshape(())
    return torch.tensor(float(value))


# --- x0 estimate and KML target -------------------------------------------------------------


def predict_x0(noisy_latents: Tensor, eps_pred: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """DDPM x0 estimate from an eps prediction, per sample, with gradient through ``eps_pred``.

    x0 = (x_t - sqrt(1 - abar_t) * eps_pred) / sqrt(abar_t), the ``pred_original_sample`` of
    diffusers' DDPMScheduler.step for ``prediction_type="epsilon"`` (SDXL: no clipping).

    noisy_latents, eps_pred: (B, C, h, w); timesteps: (B,) integers in [0, len(alphas_cumprod));
    alphas_cumprod: (T_train,), e.g. ``scheduler.alphas_cumprod``. Returns (B, C, h, w) in
    float32 (float64 if the inputs are).
    """
    _check_shape("eps_pred", eps_pred, tuple(noisy_latents.shape))
    _check_shape("timesteps", timesteps, (noisy_latents.shape[0],))
    _check_shape("alphas_cumprod", alphas_cumprod, (None,))
    if timesteps.is_floating_point():
        raise ValueError("timesteps: expected integer DDPM timesteps, got a floating point tensor")
    if bool((timesteps < 0).any()) or bool((timesteps >= alphas_cumprod.shape[0]).any()):
        raise ValueError(f"timesteps: expected values in [0, {alphas_cumprod.shape[0]}), got {timesteps.tolist()}")
    # float32: abar_t is ~0.0047 at t = 999 and fp16 rounding of 1/sqrt(abar) would show.
    eps = _float32_or_wider(eps_pred)
    abar = alphas_cumprod.to(device=eps.device, dtype=eps.dtype)[timesteps.to(eps.device)].view(-1, 1, 1, 1)
    return (noisy_latents.to(eps.dtype) - (1.0 - abar).sqrt() * eps) / abar.sqrt()


def posterior_mean_latents(vae_latent_dist_mean: Tensor, scaling_factor: float) -> Tensor:
    """The KML target latents: the MEAN of the VAE posterior, scaled like the UNet's latents.

    Call it as ``posterior_mean_latents(vae.encode(images).latent_dist.mean,
    vae.config.scaling_factor)``. The reference used ``latent_dist.sample()``, which adds VAE noise
    to a target that should be a fixed appearance. Returned detached: the VAE is frozen and the
    target must not receive gradient.
    """
    if not isinstance(vae_latent_dist_mean, Tensor):
        # latent_dist itself has a .mean attribute too; passing the distribution is the likely slip.
        raise TypeError(f"vae_latent_dist_mean: expected a tensor (latent_dist.mean), got {type(vae_latent_dist_mean).__name__}")
    return (vae_latent_dist_mean * scaling_factor).detach()


# --- keypoint matching loss -----------------------------------------------------------------


def sample_at_keypoints(latents: Tensor, keypoints: Tensor) -> Tensor:
    """Bilinear samples of ``latents`` at normalised keypoints.

    latents: (B, C, h, w); keypoints: (B, N, K, 2) as (x, y) with 0 = left/top border and 1 =
    right/bottom border of the image. Returns (B, N, K, C) in the latents' dtype.

    ``align_corners=False``: grid -1 and +1 are the outer borders of the corner pixels (not their
    centres), so keypoint (x, y) maps to grid 2 * (x, y) - 1 and the centre of latent pixel j is
    at (j + 0.5) / w, the same convention as the image pixels the keypoints were measured on.
    ``padding_mode="border"``: between the last pixel centre and the border (x > 1 - 0.5 / w)
    the value is the edge pixel's, not a blend with zero padding.
    Keypoints are clamped to [0, 1] first; non-finite ones (invisible keypoints may be stored as
    NaN) are sampled at 0 so that the value is finite, and the visibility masks must drop them.
    """
    _check_shape("latents", latents, (None, None, None, None))
    _check_shape("keypoints", keypoints, (latents.shape[0], None, None, 2))
    points = torch.nan_to_num(keypoints.to(latents.device, torch.float32), nan=0.0, posinf=1.0, neginf=0.0)
    grid = (points.clamp(0.0, 1.0) * 2.0 - 1.0).to(latents.dtype)
    sampled = F.grid_sample(latents, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled.permute(0, 2, 3, 1)  # (B, C, N, K) -> (B, N, K, C)


def keypoint_matching_loss(
    x0_pred: Tensor,
    concept_latents: Tensor,
    rel_keypoints: Tensor,
    concept_keypoints: Tensor,
    rel_visibility: Tensor,
    concept_visibility: Tensor,
    timesteps: Tensor,
    max_timestep: int = KML_MAX_TIMESTEP,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KML: x0_pred at each relation keypoint vs the concept latent at the matching concept keypoint.

    x0_pred: (B, C, h, w), with gradient; concept_latents: (B, N, C, h', w'), targets (detached
    here); rel_keypoints, concept_keypoints: (B, N, K, 2) normalised (x, y), keypoint k of relation
    instance i matched to keypoint k of concept i (the data pipeline associates instances with
    concepts); rel_visibility, concept_visibility: (B, N, K) bool or {0, 1}; timesteps: (B,).

    Per sample b: the squared difference, averaged over the C channels, averaged over the
    keypoints visible in both images; 0 if none is. Samples with t > max_timestep contribute 0.
    The loss is the mean over all B samples (see the module docstring). It is exactly 0, still
    attached to x0_pred (zero gradient, never NaN), when no keypoint of any gated sample counts.

    Stats: ``kml/gated_samples`` (samples with t <= max_timestep), ``kml/points`` (keypoints that
    count), ``kml/gated_mean`` (mean per-sample KML over gated samples with a visible keypoint;
    0 if none: the value to watch, independent of how many samples the gate let through).
    """
    batch = x0_pred.shape[0]
    _check_shape("x0_pred", x0_pred, (batch, None, None, None))
    channels = x0_pred.shape[1]
    _check_shape("concept_latents", concept_latents, (batch, None, channels, None, None))
    n_subjects = concept_latents.shape[1]
    _check_shape("rel_keypoints", rel_keypoints, (batch, n_subjects, None, 2))
    n_keypoints = rel_keypoints.shape[2]
    _check_shape("concept_keypoints", concept_keypoints, (batch, n_subjects, n_keypoints, 2))
    _check_shape("rel_visibility", rel_visibility, (batch, n_subjects, n_keypoints))
    _check_shape("concept_visibility", concept_visibility, (batch, n_subjects, n_keypoints))
    _check_shape("timesteps", timesteps, (batch,))

    device = x0_pred.device
    predicted = sample_at_keypoints(_float32_or_wider(x0_pred), rel_keypoints)  # (B, N, K, C)
    concepts = concept_latents.detach().to(predicted.dtype).flatten(0, 1)  # (B*N, C, h', w')
    target = sample_at_keypoints(concepts, concept_keypoints.flatten(0, 1).unsqueeze(1))  # (B*N, 1, K, C)
    target = target.view(batch, n_subjects, n_keypoints, channels)

    gate = timesteps.to(device) <= max_timestep  # (B,): per sample, never a Python if
    counted = rel_visibility.to(device).bool() & concept_visibility.to(device).bool() & gate.view(batch, 1, 1)
    squared = (predicted - target).pow(2).mean(dim=-1)  # (B, N, K)
    # where, not multiply: an excluded keypoint must not bring a NaN or Inf into the sum.
    per_point = torch.where(counted, squared, torch.zeros_like(squared))
    points_per_sample = counted.sum(dim=(1, 2))  # (B,)
    per_sample = per_point.sum(dim=(1, 2)) / points_per_sample.clamp(min=1).to(per_point.dtype)
    loss = per_sample.sum() / batch

    active = points_per_sample > 0
    gated_mean = per_sample.sum() / active.sum().clamp(min=1)
    stats = {
        "kml/gated_samples": _stat(gate.sum()),
        "kml/points": _stat(points_per_sample.sum()),
        "kml/gated_mean": _stat(gated_mean),
    }
    return loss, stats


# --- relation attention loss ----------------------------------------------------------------


def _layer_hw(queries: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a UNet layer with ``queries`` = h * w positions: the latent size halved (rounded
    up, as a stride-2 convolution with padding 1 does) until it fits, so the aspect ratio is the latent's."""
    height, width = latent_hw
    while height * width > queries and (height > 1 or width > 1):
        height, width = (height + 1) // 2, (width + 1) // 2
    if height * width != queries:
        raise ValueError(f"attention map with {queries} queries does not match latent size {tuple(latent_hw)} halved n times")
    return height, width


def relation_attention_loss(
    maps: Sequence[Tensor],
    predicate_token_mask: Tensor,
    subject_masks: Tensor,
    latent_hw: tuple[int, int],
) -> tuple[Tensor, dict[str, Tensor]]:
    """L_attn: push the predicate tokens' attention onto the subjects and off the background.

    maps: per layer (B, Q, T) text cross-attention probabilities, heads already averaged (see
    ``relbench.methods.ms_diffusion.attention.AttentionStore``); predicate_token_mask: (B, T) bool; subject_masks: (B, N, 1, H, W)
    per subject or (B, 1, H, W) already united, values in {0, 1}; latent_hw: the UNet input's
    (h, w), which gives each layer's (h, w) with the same aspect ratio.

    Per layer and sample: A = the predicate columns averaged, reshaped (h, w); M = the union mask,
    nearest-downsampled to (h, w); value = sum(A * (1 - M)) / (sum(1 - M) + eps) - sum(A * M) /
    (sum(M) + eps), eps = 1e-5: the mean attention over the background minus the mean over the
    subjects, each averaged over its own area (the reference's normalisation). So the value
    measures where the attention is, not how much there is: a uniform map gives 0 at any mask
    coverage. Values are averaged over layers, then over all B samples. A sample with no
    predicate token has no map to shape: it contributes 0 (per-sample mask), and
    ``attn/samples`` in the stats counts the samples that do contribute.
    """
    if len(maps) == 0:
        # An empty store means the processors did not record: a wiring error, not a zero loss.
        raise ValueError("maps: no attention maps were recorded for this step")
    batch, tokens = predicate_token_mask.shape
    if subject_masks.dim() == 5:
        _check_shape("subject_masks", subject_masks, (batch, None, 1, None, None))
        union = subject_masks.float().amax(dim=1)  # (B, 1, H, W)
    else:
        _check_shape("subject_masks", subject_masks, (batch, 1, None, None))
        union = subject_masks.float()

    selected = predicate_token_mask.bool()
    n_selected = selected.sum(dim=1)  # (B,)
    has_predicate = n_selected > 0
    # Column weights 1/n over the predicate tokens: A = probs @ weights averages those columns.
    weights = selected.float() / n_selected.clamp(min=1).unsqueeze(1).float()  # (B, T)

    layer_values, inside_values, outside_values = [], [], []
    for index, layer_map in enumerate(maps):
        _check_shape(f"maps[{index}]", layer_map, (batch, None, tokens))
        height, width = _layer_hw(layer_map.shape[1], latent_hw)
        probs = _float32_or_wider(layer_map)
        attention = torch.einsum("bqt,bt->bq", probs, weights.to(probs.device, probs.dtype))
        attention = attention.view(batch, height, width)
        mask = F.interpolate(union.to(probs.device, probs.dtype), size=(height, width), mode="nearest")
        mask = mask.view(batch, height, width)
        background = 1.0 - mask
        # Each region's mean over its own area; eps keeps an empty region at 0 instead of NaN.
        outside = (attention * background).sum(dim=(1, 2)) / (background.sum(dim=(1, 2)) + ATTN_AREA_EPS)  # (B,)
        inside = (attention * mask).sum(dim=(1, 2)) / (mask.sum(dim=(1, 2)) + ATTN_AREA_EPS)
        layer_values.append(outside - inside)
        inside_values.append(inside.detach())
        outside_values.append(outside.detach())
    per_sample = torch.stack(layer_values).mean(dim=0)  # (B,): mean over layers
    # A sample without predicate tokens has A = 0 already; the mask says so explicitly.
    per_sample = torch.where(has_predicate.to(per_sample.device), per_sample, torch.zeros_like(per_sample))
    loss = per_sample.sum() / batch

    # Area-averaged attention inside / outside the subjects, over contributing samples and all layers.
    denominator = max(int(has_predicate.sum()), 1) * len(maps)
    stats = {
        "attn/layers": _stat(len(maps)),
        "attn/samples": _stat(has_predicate.sum()),
        "attn/inside": _stat(torch.stack(inside_values).sum() / denominator),
        "attn/outside": _stat(torch.stack(outside_values).sum() / denominator),
    }
    return loss, stats


def predicate_token_mask(
    tokenizer: "PreTrainedTokenizerBase",
    prompts: Sequence[str],
    predicates: Sequence[Sequence[str]],
    max_length: int = 77,
) -> Tensor:
    """(B, max_length) bool: True at the tokens of the predicate words in each tokenized prompt.

    The prompt is tokenized exactly as the text encoder sees it (BOS first, padded and truncated
    to max_length). Each predicate entry (a word, or several separated by spaces) is tokenized on
    its own, lower-cased (CLIP lower-cases), and marked wherever its token ids occur as a
    whole-word subsequence: CLIP BPE may split one word into several tokens ("piggybacking" ->
    "pi", "ggy", "backing</w>"), and all of them are marked; a match must start a word (the token
    before it is BOS or ends a word), so "backing" does not match inside "piggybacking". Every
    occurrence is marked. An empty predicate list gives a row of False (that sample then adds 0
    to L_attn). A predicate that does not occur in the first max_length tokens is a data mistake
    and raises RelbenchError.
    """
    if len(prompts) != len(predicates):
        raise ValueError(f"predicates: expected one list per prompt ({len(prompts)}), got {len(predicates)}")
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for row, (prompt, words) in enumerate(zip(prompts, predicates)):
        prompt_ids = ids[row].tolist()
        tokens = tokenizer.convert_ids_to_tokens(prompt_ids)
        for word in words:
            word_ids = tokenizer(word.lower(), add_special_tokens=False).input_ids
            if not word_ids:
                raise RelbenchError(f"predicate {word!r} of prompt {prompt!r}: expected a word, got no tokens")
            found = False
            for start in range(1, len(prompt_ids) - len(word_ids) + 1):
                starts_word = start == 1 or tokens[start - 1].endswith(_CLIP_WORD_END)
                if starts_word and prompt_ids[start : start + len(word_ids)] == word_ids:
                    mask[row, start : start + len(word_ids)] = True
                    found = True
            if not found:
                raise RelbenchError(
                    f"predicate {word!r} does not occur as a whole word in prompt {prompt!r} (first {max_length} tokens)"
                )
    return mask


# --- combination ----------------------------------------------------------------------------


def diffusion_loss(eps_pred: Tensor, noise: Tensor) -> Tensor:
    """The denoising MSE in float32, averaged over every element (eps-prediction target)."""
    _check_shape("eps_pred", eps_pred, tuple(noise.shape))
    return F.mse_loss(eps_pred.float(), noise.float(), reduction="mean")


@dataclass(frozen=True)
class DreamRelationLoss:
    """The weights of the three terms and which are on (paper: 1.0, 0.1, 0.001, all on)."""

    diffusion_weight: float = 1.0
    kml_weight: float = 0.1
    attn_weight: float = 0.001
    # KML counts for samples with t <= kml_max_timestep only.
    kml_max_timestep: int = KML_MAX_TIMESTEP
    use_kml: bool = True
    use_attn: bool = True

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_weight") and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                                  or not math.isfinite(value) or value < 0):
                raise RelbenchError(f"dreamrelation.{item.name}: expected a finite number >= 0, got {value!r}")
        if isinstance(self.kml_max_timestep, bool) or not isinstance(self.kml_max_timestep, int) or self.kml_max_timestep < 0:
            raise RelbenchError(f"dreamrelation.kml_max_timestep: expected an integer >= 0, got {self.kml_max_timestep!r}")

    def combine(
        self,
        diffusion: Tensor,
        kml: Tensor | None = None,
        attn: Tensor | None = None,
        stats: Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(total, logs): the weighted sum of the enabled terms, and every term explained.

        For each term t in diffusion, kml, attn the logs hold ``t/enabled`` (1 or 0) and
        ``t/weight`` (the weight applied, 0 if disabled); when its value is given, ``t`` (the
        unweighted value) and ``t/weighted`` (its share of the total). An enabled term without a
        value is an error (never a silent skip); a disabled term's value, if given, is logged but
        not added. ``loss`` is the total; ``stats`` (from the loss functions) are merged in.
        All logged values are detached float32 scalars.
        """
        terms = (
            ("diffusion", diffusion, True, self.diffusion_weight),
            ("kml", kml, self.use_kml, self.kml_weight),
            ("attn", attn, self.use_attn, self.attn_weight),
        )
        parts: list[Tensor] = []
        logs: dict[str, Tensor] = {}
        for name, value, enabled, weight in terms:
            if enabled and value is None:
                raise ValueError(f"{name}: the term is enabled but no value was given (disable it with use_{name}=False)")
            logs[f"{name}/enabled"] = _stat(1.0 if enabled else 0.0)
            logs[f"{name}/weight"] = _stat(weight if enabled else 0.0)
            if value is None:
                continue
            _check_shape(name, value, ())
            logs[name] = _stat(value)
            weighted = _float32_or_wider(value) * weight if enabled else torch.zeros((), device=value.device)
            logs[f"{name}/weighted"] = _stat(weighted)
            if enabled:
                parts.append(weighted)
        total = sum(parts[1:], parts[0])  # parts[0] is the diffusion term, always enabled
        logs["loss"] = _stat(total)
        for key, value in (stats or {}).items():
            logs[key] = _stat(value)
        return total, logs
