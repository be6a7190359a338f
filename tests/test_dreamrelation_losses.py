"""DreamRelation's losses against hand-computed values, with the reference code's defects as cases."""

from __future__ import annotations

import math

import pytest
import torch

from relbench.errors import RelbenchError
from relbench.methods.dreamrelation.losses import (
    DreamRelationLoss,
    diffusion_loss,
    keypoint_matching_loss,
    posterior_mean_latents,
    predicate_token_mask,
    predict_x0,
    relation_attention_loss,
    sample_at_keypoints,
)
from relbench.tiny import SDXL_SCHEDULER_CONFIG, clip_tokenizer

# Relation latents (channel 0) and concept latents (channel 0); channel 1 is zero in both, so a
# point's squared error averaged over the 2 channels is half the channel-0 one.
REL_C0 = [[1.0, 2.0], [3.0, 4.0]]
CONCEPT_C0 = [[0.0, 1.0], [2.0, 3.0]]
# (x, y): on a 2 x 2 grid pixel centres are at 0.25 and 0.75.
REL_POINTS = [(0.25, 0.25), (0.5, 0.25), (0.5, 0.5), (0.375, 0.75)]
# Bilinear values by hand: a centre; halfway along row 0; the middle of all four; on row 1 at
# pixel coordinate x = 0.375 * 2 - 0.5 = 0.25, i.e. 0.75 * 3 + 0.25 * 4.
REL_VALUES = [1.0, 1.5, 2.5, 3.25]
CONCEPT_POINTS = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]  # centres: 0, 1, 2, 3
# Per point (diff ** 2) / 2 channels: (1, 0.25, 0.25, 0.0625) / 2; mean over the 4 points.
HAND_KML = (0.5 + 0.125 + 0.125 + 0.03125) / 4  # 0.1953125


def two_channel(c0: list[list[float]]) -> torch.Tensor:
    return torch.stack([torch.tensor(c0), torch.zeros(2, 2)])  # (2, 2, 2)


def kml_inputs(batch: int) -> dict[str, torch.Tensor]:
    """The hand-computed case repeated over the batch: N = 1 subject, K = 4 keypoints."""
    return dict(
        x0_pred=two_channel(REL_C0).expand(batch, 2, 2, 2).clone(),
        concept_latents=two_channel(CONCEPT_C0).expand(batch, 1, 2, 2, 2).clone(),
        rel_keypoints=torch.tensor(REL_POINTS).expand(batch, 1, 4, 2).clone(),
        concept_keypoints=torch.tensor(CONCEPT_POINTS).expand(batch, 1, 4, 2).clone(),
        rel_visibility=torch.ones(batch, 1, 4, dtype=torch.bool),
        concept_visibility=torch.ones(batch, 1, 4, dtype=torch.bool),
    )


def sdxl_alphas_cumprod() -> torch.Tensor:
    from diffusers import DDPMScheduler

    config = {k: SDXL_SCHEDULER_CONFIG[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
    return DDPMScheduler(**config, clip_sample=False).alphas_cumprod


# --- x0 estimate and sampling ---------------------------------------------------------------


def test_predict_x0_matches_closed_form_per_sample_and_ddpm_scheduler() -> None:
    from diffusers import DDPMScheduler

    alphas_cumprod = sdxl_alphas_cumprod()
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(3, 4, 2, 2, generator=generator)
    eps = torch.randn(3, 4, 2, 2, generator=generator)
    timesteps = torch.tensor([0, 333, 999])
    x0 = predict_x0(noisy, eps, timesteps, alphas_cumprod)
    assert x0.dtype == torch.float32 and x0.shape == (3, 4, 2, 2)

    # Closed form of the scaled-linear schedule: beta_i = (sqrt(b0) + i / 999 * (sqrt(b1) - sqrt(b0))) ** 2.
    for row, t in enumerate(timesteps.tolist()):
        abar = math.prod(1 - (math.sqrt(0.00085) + i / 999 * (math.sqrt(0.012) - math.sqrt(0.00085))) ** 2 for i in range(t + 1))
        expected = (noisy[row].double() - math.sqrt(1 - abar) * eps[row].double()) / math.sqrt(abar)
        torch.testing.assert_close(x0[row].double(), expected, rtol=1e-5, atol=1e-5)

    # The reference's x0 (DDPMScheduler.step's pred_original_sample), one sample at a time.
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False)
    for row, t in enumerate(timesteps.tolist()):
        reference = scheduler.step(eps[row : row + 1], t, noisy[row : row + 1]).pred_original_sample
        torch.testing.assert_close(x0[row : row + 1], reference, rtol=1e-5, atol=1e-5)


def test_predict_x0_rejects_out_of_range_timesteps() -> None:
    with pytest.raises(ValueError, match="timesteps"):
        predict_x0(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([1000]), sdxl_alphas_cumprod())


def test_sample_at_keypoints_bilinear_by_hand() -> None:
    latents = two_channel(REL_C0).unsqueeze(0)  # (1, 2, 2, 2)
    sampled = sample_at_keypoints(latents, torch.tensor(REL_POINTS).view(1, 1, 4, 2))
    assert sampled.shape == (1, 1, 4, 2)  # (B, N, K, C)
    torch.testing.assert_close(sampled[0, 0, :, 0], torch.tensor(REL_VALUES))
    torch.testing.assert_close(sampled[0, 0, :, 1], torch.zeros(4))


def test_keypoints_on_and_beyond_the_border_stay_in_range() -> None:
    # Defect #2: the reference indexed pixel int(1.0 * w) = w, one past the end.
    latents = torch.tensor(REL_C0).view(1, 1, 2, 2)
    points = torch.tensor([(1.0, 1.0), (0.0, 0.0), (1.0, 0.0), (1.7, -0.3), (0.9, 0.25)]).view(1, 1, 5, 2)
    sampled = sample_at_keypoints(latents, points)[0, 0, :, 0]
    # Border padding: beyond the last pixel centre the edge pixel's value, not a blend with 0;
    # (1.7, -0.3) is clamped to (1, 0).
    torch.testing.assert_close(sampled, torch.tensor([4.0, 1.0, 2.0, 2.0, 2.0]))


# --- keypoint matching loss -----------------------------------------------------------------


def test_kml_hand_computed_value() -> None:
    loss, stats = keypoint_matching_loss(**kml_inputs(1), timesteps=torch.tensor([100]))
    assert loss.item() == pytest.approx(HAND_KML, abs=1e-7)
    assert stats["kml/gated_samples"].item() == 1
    assert stats["kml/points"].item() == 4
    assert stats["kml/gated_mean"].item() == pytest.approx(HAND_KML, abs=1e-7)


def test_kml_gate_is_per_sample() -> None:
    # Defect #1: the reference's `if timesteps <= 333` on the batch cannot express a mixed batch.
    inputs = kml_inputs(2)
    x0 = inputs.pop("x0_pred").requires_grad_(True)
    timesteps = torch.tensor([100, 900])
    loss, stats = keypoint_matching_loss(x0, **inputs, timesteps=timesteps)
    # Only sample 0 counts, and the batch mean divides by B = 2 (as 2 batch-1 steps would).
    assert loss.item() == pytest.approx(HAND_KML / 2, abs=1e-7)
    assert stats["kml/gated_samples"].item() == 1 and stats["kml/points"].item() == 4
    assert stats["kml/gated_mean"].item() == pytest.approx(HAND_KML, abs=1e-7)
    loss.backward()
    assert x0.grad[1].abs().max().item() == 0.0
    assert x0.grad[0].abs().max().item() > 0.0
    # A gate on the batch as a whole would give either 0 or both samples' mean, never this.
    batch_gate_open, _ = keypoint_matching_loss(x0.detach(), **inputs, timesteps=torch.tensor([100, 100]))
    assert batch_gate_open.item() == pytest.approx(HAND_KML, abs=1e-7)
    assert abs(batch_gate_open.item() - loss.item()) > 0.09


def test_kml_is_an_exact_zero_with_a_graph_when_nothing_counts() -> None:
    for timesteps, visible in ((torch.tensor([900, 334]), True), (torch.tensor([0, 0]), False)):
        inputs = kml_inputs(2)
        inputs["rel_visibility"] = torch.full((2, 1, 4), visible)
        x0 = inputs.pop("x0_pred").requires_grad_(True)
        loss, stats = keypoint_matching_loss(x0, **inputs, timesteps=timesteps)
        assert loss.item() == 0.0 and loss.requires_grad
        assert stats["kml/points"].item() == 0 and stats["kml/gated_mean"].item() == 0.0
        loss.backward()
        assert torch.equal(x0.grad, torch.zeros_like(x0))


def test_kml_ignores_invisible_keypoints_even_with_nan_coordinates() -> None:
    inputs = kml_inputs(1)
    inputs["rel_visibility"][0, 0, 1] = False  # point 1 hidden in the relation image
    inputs["concept_visibility"][0, 0, 3] = False  # point 3 hidden in the concept image
    inputs["concept_keypoints"][0, 0, 3] = float("nan")
    x0 = inputs.pop("x0_pred").requires_grad_(True)
    loss, stats = keypoint_matching_loss(x0, **inputs, timesteps=torch.tensor([0]))
    assert loss.item() == pytest.approx((0.5 + 0.125) / 2, abs=1e-7)  # points 0 and 2 only
    assert stats["kml/points"].item() == 2
    loss.backward()
    assert torch.isfinite(x0.grad).all()


def test_kml_handles_n_subjects_and_k_keypoints_matched_by_index() -> None:
    # Defect #7: N = 3 subjects, K = 2 keypoints; subject i's relation keypoint k reads concept i's.
    x0 = torch.arange(16.0).view(1, 1, 4, 4)  # value = 4 * row + col
    concepts = torch.stack([torch.full((1, 4, 4), value) for value in (5.0, 10.0, 0.0)]).unsqueeze(0)  # (1, 3, 1, 4, 4)

    def centre(col: int, row: int) -> tuple[float, float]:
        return ((col + 0.5) / 4, (row + 0.5) / 4)

    rel_points = torch.tensor([[centre(1, 1), centre(2, 1)], [centre(2, 2), centre(0, 3)], [centre(0, 0), centre(3, 3)]]).unsqueeze(0)
    loss, stats = keypoint_matching_loss(
        x0, concepts, rel_points, torch.full((1, 3, 2, 2), 0.5),
        torch.ones(1, 3, 2, dtype=torch.bool), torch.ones(1, 3, 2, dtype=torch.bool), torch.tensor([10]),
    )
    # Values 5, 6 vs 5; 10, 12 vs 10; 0, 15 vs 0.
    assert loss.item() == pytest.approx((0 + 1 + 0 + 4 + 0 + 225) / 6)
    assert stats["kml/points"].item() == 6


def test_kml_gradient_reaches_eps_pred() -> None:
    alphas_cumprod = sdxl_alphas_cumprod()
    t = 200
    abar = alphas_cumprod[t].item()
    noisy = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    eps = torch.zeros(1, 1, 2, 2, requires_grad=True)
    x0 = predict_x0(noisy, eps, torch.tensor([t]), alphas_cumprod)
    target = torch.full((1, 1, 1, 2, 2), 0.7)
    point = torch.tensor([(0.25, 0.25)]).view(1, 1, 1, 2)  # centre of pixel (0, 0)
    visible = torch.ones(1, 1, 1, dtype=torch.bool)
    loss, _ = keypoint_matching_loss(x0, target, point, point, visible, visible, torch.tensor([t]))
    loss.backward()
    # d/d eps of (x0 - 0.7) ** 2 with x0 = (x_t - sqrt(1 - abar) * eps) / sqrt(abar).
    expected = torch.zeros(1, 1, 2, 2)
    expected[0, 0, 0, 0] = 2 * (noisy[0, 0, 0, 0].item() / math.sqrt(abar) - 0.7) * (-math.sqrt(1 - abar) / math.sqrt(abar))
    torch.testing.assert_close(eps.grad, expected, rtol=1e-5, atol=1e-6)


def test_posterior_mean_latents_uses_the_mean_scaled_and_detached() -> None:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    parameters = torch.cat([torch.full((1, 4, 2, 2), 0.5), torch.full((1, 4, 2, 2), 2.0)], dim=1).requires_grad_(True)
    distribution = DiagonalGaussianDistribution(parameters)  # mean 0.5, std e
    latents = posterior_mean_latents(distribution.mean, 0.13025)
    torch.testing.assert_close(latents, torch.full((1, 4, 2, 2), 0.5 * 0.13025))
    assert not latents.requires_grad
    with pytest.raises(TypeError, match="latent_dist.mean"):
        posterior_mean_latents(distribution, 0.13025)  # type: ignore[arg-type]


# --- relation attention loss ----------------------------------------------------------------

# One sample, 4 queries (2 x 2), 3 tokens; tokens 1 and 2 are the predicate.
PROBS_2X2 = [[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.1, 0.1, 0.8], [0.4, 0.4, 0.2]]
# A = mean of columns 1, 2 per query: 0.4, 0.2, 0.45, 0.3.


def mask_4x4() -> torch.Tensor:
    """Nearest-downsampled to 2 x 2 it reads pixels (0, 0), (0, 2), (2, 0), (2, 2): [[1, 0], [0, 1]].
    Pixel (1, 3) is set too, which an area or bilinear resize would see and nearest must not."""
    mask = torch.zeros(4, 4)
    mask[0, 0] = mask[2, 2] = mask[1, 3] = 1.0
    return mask


def test_attention_loss_hand_computed_on_a_2x2_map() -> None:
    maps = [torch.tensor(PROBS_2X2).unsqueeze(0)]
    tokens = torch.tensor([[False, True, True]])
    loss, stats = relation_attention_loss(maps, tokens, mask_4x4().view(1, 1, 4, 4), latent_hw=(4, 4))
    # Each region averaged over its own 2 positions (+ 1e-5): inside (0.4 + 0.3) / 2, outside (0.2 + 0.45) / 2.
    area = 2 + 1e-5
    assert loss.item() == pytest.approx((0.65 - 0.7) / area, abs=1e-7)
    assert stats["attn/inside"].item() == pytest.approx(0.7 / area, abs=1e-7)
    assert stats["attn/outside"].item() == pytest.approx(0.65 / area, abs=1e-7)
    assert stats["attn/layers"].item() == 1 and stats["attn/samples"].item() == 1


def test_attention_loss_averages_each_region_over_its_own_area() -> None:
    # Unequal areas: the subject covers 1 of the 4 positions, the background 3 (the reference's
    # sum(A * (1 - M)) / (sum(1 - M) + 1e-5) - sum(A * M) / (sum(M) + 1e-5)); float64 for exactness.
    maps = [torch.tensor(PROBS_2X2, dtype=torch.float64).unsqueeze(0)]  # A = 0.4, 0.2, 0.45, 0.3
    mask = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    mask[0, 0, 0, 0] = 1.0
    loss, stats = relation_attention_loss(maps, torch.tensor([[False, True, True]]), mask, latent_hw=(2, 2))
    inside, outside = 0.4 / (1 + 1e-5), (0.2 + 0.45 + 0.3) / (3 + 1e-5)
    assert loss.item() == pytest.approx(outside - inside, rel=1e-12)  # -0.0833; the h * w mean gave +0.1375
    assert stats["attn/inside"].item() == pytest.approx(inside, rel=1e-6)
    assert stats["attn/outside"].item() == pytest.approx(outside, rel=1e-6)


def test_uniform_attention_gives_zero_at_any_mask_coverage() -> None:
    # Three samples, one layer of 4 x 4, uniform predicate attention of different strengths and
    # subject masks covering 1, 9 and 15 of 16 positions: the loss responds to where the attention
    # is, never to how much of it there is (mean over the whole map gave 0.05 * (15 - 1) / 16 etc.).
    probs = torch.zeros(3, 16, 2, dtype=torch.float64)
    for sample, value in enumerate((0.05, 0.3, 0.9)):
        probs[sample, :, 1], probs[sample, :, 0] = value, 1 - value
    masks = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    masks[0, 0, 0, 0] = 1.0
    masks[1, 0, :3, :3] = 1.0
    masks[2, 0] = 1.0
    masks[2, 0, 3, 3] = 0.0
    tokens = torch.tensor([[False, True]] * 3)
    loss, _ = relation_attention_loss([probs], tokens, masks, latent_hw=(4, 4))
    assert abs(loss.item()) < 1e-5  # 0 up to the 1e-5 added to each area
    for sample in range(3):  # and each sample on its own
        alone, _ = relation_attention_loss([probs[sample:sample + 1]], tokens[:1], masks[sample:sample + 1], latent_hw=(4, 4))
        assert abs(alone.item()) < 1e-5, sample


def test_attention_loss_unites_subjects_averages_layers_and_masks_samples_without_predicate() -> None:
    subject_masks = torch.zeros(2, 2, 1, 4, 4)  # (B, N, 1, H, W): the three pixels split over 2 subjects
    subject_masks[:, 0, 0, 0, 0] = 1.0
    subject_masks[:, 1, 0, 2, 2] = subject_masks[:, 1, 0, 1, 3] = 1.0
    layer_2x2 = torch.tensor(PROBS_2X2).expand(2, 4, 3)
    layer_4x4 = torch.full((2, 16, 3), 1 / 3)  # A = 1/3 everywhere; M has 3 of 16 pixels
    tokens = torch.tensor([[False, True, True], [False, False, False]])  # sample 1: no predicate
    loss, stats = relation_attention_loss([layer_2x2, layer_4x4], tokens, subject_masks, latent_hw=(4, 4))
    sample_0 = ((0.65 - 0.7) / (2 + 1e-5) + 0.0) / 2  # mean over the two layers; uniform attention gives 0
    assert loss.item() == pytest.approx(sample_0 / 2, abs=1e-6)  # sample 1 adds 0, B = 2
    assert stats["attn/samples"].item() == 1 and stats["attn/layers"].item() == 2


def test_attention_loss_reshapes_with_the_latent_aspect_ratio() -> None:
    # latent 2 x 4: a layer of 8 queries is 2 rows x 4 columns, row-major.
    probs = torch.zeros(1, 8, 2)
    probs[0, :, 0] = 1.0
    probs[0, 3, :] = torch.tensor([0.0, 1.0])  # the predicate only at query 3 = row 0, column 3
    mask = torch.zeros(1, 1, 2, 4)
    mask[0, 0, 0, 3] = 1.0
    loss, _ = relation_attention_loss([probs], torch.tensor([[False, True]]), mask, latent_hw=(2, 4))
    assert loss.item() == pytest.approx(-1 / (1 + 1e-5), abs=1e-7)  # inside: 1 over 1 position; outside: 0 over 7
    with pytest.raises(ValueError, match="6 queries"):
        relation_attention_loss([torch.zeros(1, 6, 2)], torch.tensor([[False, True]]), mask, latent_hw=(2, 4))


def test_attention_loss_gradient_and_empty_store() -> None:
    logits = torch.zeros(1, 4, 3, requires_grad=True)
    loss, _ = relation_attention_loss([logits.softmax(-1)], torch.tensor([[False, True, True]]),
                                      mask_4x4().view(1, 1, 4, 4), latent_hw=(4, 4))
    loss.backward()
    assert logits.grad.abs().sum().item() > 0
    with pytest.raises(ValueError, match="no attention maps"):
        relation_attention_loss([], torch.tensor([[True]]), torch.ones(1, 1, 2, 2), latent_hw=(2, 2))


# --- predicate tokens -----------------------------------------------------------------------


def test_predicate_mask_marks_exactly_the_predicate_tokens() -> None:
    tokenizer = clip_tokenizer()
    prompts = ["A wolf shakes hands with a leopard.", "A dog is piggybacking a cat."]
    mask = predicate_token_mask(tokenizer, prompts, [["Shakes", "hands"], ["piggybacking"]])
    assert mask.shape == (2, 77) and mask.dtype == torch.bool
    # <bos> a wolf shakes hands ...: positions 3, 4.
    assert mask[0].nonzero().flatten().tolist() == [3, 4]
    # <bos> a dog is pi ggy backing a cat: the word is 3 BPE tokens, all marked.
    assert mask[1].nonzero().flatten().tolist() == [4, 5, 6]
    assert tokenizer.convert_ids_to_tokens(tokenizer(prompts[1]).input_ids[4:7]) == ["pi", "ggy", "backing</w>"]


def test_predicate_mask_matches_whole_words_only_and_reports_misses() -> None:
    tokenizer = clip_tokenizer()
    # "backing</w>" is the last token of "piggybacking" but not a word of this prompt.
    with pytest.raises(RelbenchError, match="'backing' does not occur as a whole word in prompt 'A dog is piggybacking a cat.'"):
        predicate_token_mask(tokenizer, ["A dog is piggybacking a cat."], [["backing"]])
    empty = predicate_token_mask(tokenizer, ["A dog next to a cat."], [[]])
    assert not empty.any()


# --- combination ----------------------------------------------------------------------------


def test_combine_weights_every_term_and_logs_it() -> None:
    diffusion, kml, attn = torch.tensor(0.5, requires_grad=True), torch.tensor(2.0), torch.tensor(-3.0)
    total, logs = DreamRelationLoss().combine(diffusion, kml, attn, stats={"kml/points": torch.tensor(4)})
    assert total.item() == pytest.approx(0.5 + 0.1 * 2.0 + 0.001 * -3.0)
    assert total.requires_grad
    assert logs["loss"].item() == pytest.approx(total.item())
    assert {k: round(v.item(), 6) for k, v in logs.items()} == {
        "diffusion/enabled": 1.0, "diffusion/weight": 1.0, "diffusion": 0.5, "diffusion/weighted": 0.5,
        "kml/enabled": 1.0, "kml/weight": 0.1, "kml": 2.0, "kml/weighted": 0.2,
        "attn/enabled": 1.0, "attn/weight": 0.001, "attn": -3.0, "attn/weighted": -0.003,
        "loss": 0.697, "kml/points": 4.0,
    }
    assert all(not v.requires_grad and v.dtype == torch.float32 for v in logs.values())


def test_combine_reports_disabled_terms_and_refuses_missing_ones() -> None:
    # Defect #8: a term is either computed and logged, or logged as disabled; never skipped silently.
    settings = DreamRelationLoss(use_kml=False)
    total, logs = settings.combine(torch.tensor(0.5), kml=None, attn=torch.tensor(1.0))
    assert total.item() == pytest.approx(0.501)
    assert logs["kml/enabled"].item() == 0.0 and logs["kml/weight"].item() == 0.0
    assert "kml" not in logs and "kml/weighted" not in logs
    # A disabled term computed anyway is logged for monitoring but not added.
    total, logs = settings.combine(torch.tensor(0.5), kml=torch.tensor(9.0), attn=torch.tensor(1.0))
    assert total.item() == pytest.approx(0.501) and logs["kml"].item() == 9.0 and logs["kml/weighted"].item() == 0.0
    with pytest.raises(ValueError, match="attn: the term is enabled but no value was given"):
        DreamRelationLoss().combine(torch.tensor(0.5), kml=torch.tensor(1.0))
    with pytest.raises(RelbenchError, match=r"dreamrelation.kml_weight: expected a finite number >= 0, got -1"):
        DreamRelationLoss(kml_weight=-1)


def test_full_objective_backpropagates_to_eps_pred() -> None:
    alphas_cumprod = sdxl_alphas_cumprod()
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(2, 2, 2, 2, generator=generator)
    noisy = torch.randn(2, 2, 2, 2, generator=generator)
    eps_pred = torch.randn(2, 2, 2, 2, generator=generator, requires_grad=True)
    timesteps = torch.tensor([50, 700])
    inputs = kml_inputs(2)
    inputs.pop("x0_pred")
    x0 = predict_x0(noisy, eps_pred, timesteps, alphas_cumprod)
    kml, kml_stats = keypoint_matching_loss(x0, **inputs, timesteps=timesteps)
    attn, attn_stats = relation_attention_loss([torch.full((2, 4, 3), 1 / 3)], torch.tensor([[False, True, True]] * 2),
                                               mask_4x4().view(1, 1, 4, 4).expand(2, 1, 4, 4), latent_hw=(2, 2))
    total, logs = DreamRelationLoss().combine(diffusion_loss(eps_pred, noise), kml, attn, stats={**kml_stats, **attn_stats})
    total.backward()
    # Sample 1 (t = 700) gets the diffusion gradient only: 2 * (eps_pred - noise) / numel.
    torch.testing.assert_close(eps_pred.grad[1], 2 * (eps_pred[1] - noise[1]).detach() / noise.numel())
    assert not torch.allclose(eps_pred.grad[0], 2 * (eps_pred[0] - noise[0]).detach() / noise.numel())
    assert logs["kml/gated_samples"].item() == 1 and logs["attn/layers"].item() == 1
