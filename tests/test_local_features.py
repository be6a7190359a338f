"""DreamRelation's local features: per-image roi tokens, MaskCLIP dense features, token counts, weights."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from relbench.errors import RelbenchError
from relbench.methods.ms_diffusion.config import MSAdapterConfig
from relbench.methods.ms_diffusion.encoders import SubjectEncoder, tiny_image_encoder
from relbench.methods.ms_diffusion.local_features import (
    RESAMPLER_WEIGHT_NAME, DenseImageEncoder, LocalFeatureEncoder, convert_open_clip_checkpoint, dense_encoder_for,
    grid_boxes, load_resampler, mask_box, roi_tokens, save_resampler, subject_boxes, tiny_dense_model,
)
from relbench.methods.ms_diffusion.resampler import GroundingResampler
from relbench.profiles import RunContext
from relbench.tiny import seeded


def one_line(excinfo: pytest.ExceptionInfo[RelbenchError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def picture(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def tiny_local_encoder(seed: int = 0) -> LocalFeatureEncoder:
    model, processor = tiny_image_encoder(seed)
    subject = SubjectEncoder(model, processor, nn.Identity(), None)
    return LocalFeatureEncoder(subject, DenseImageEncoder.tiny(seed + 3))


# ------------------------------------------------------------------------ pseudo-boxes, roi_align


def test_grid_boxes_tile_the_subject_box_row_major() -> None:
    box = torch.tensor([0.1, 0.2, 0.7, 0.9], dtype=torch.float64)
    cells = grid_boxes(box, 4)
    assert cells.shape == (16, 4)
    widths, heights = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    torch.testing.assert_close(widths, torch.full((16,), 0.15, dtype=torch.float64))
    torch.testing.assert_close(heights, torch.full((16,), 0.175, dtype=torch.float64))
    # Union = the box, total area = the box's, and no two cells overlap: a tiling.
    torch.testing.assert_close(cells[:, :2].amin(0), box[:2])
    torch.testing.assert_close(cells[:, 2:].amax(0), box[2:])
    torch.testing.assert_close((widths * heights).sum(), torch.tensor(0.6 * 0.7, dtype=torch.float64))
    for a, b in itertools.combinations(cells.tolist(), 2):
        overlap = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        assert overlap < 1e-12
    # Row-major: cell 1 is right of cell 0 on the same row, cell 4 starts the next row.
    assert cells[1, 0] == cells[0, 2] and cells[1, 1] == cells[0, 1]
    assert cells[4, 0] == cells[0, 0] and cells[4, 1] == cells[0, 3]
    assert grid_boxes(torch.rand(3, 2, 4), 2).shape == (3, 2, 4, 4)


def test_roi_tokens_pool_each_image_from_its_own_features() -> None:
    with seeded(0):
        dense = torch.randn(2, 5, 8, 8)
    # Image 0: whole image (each 4x4 cell = 2x2 features); image 1: its top-right quarter (1x1).
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]], [[0.5, 0.0, 1.0, 0.5]]])
    tokens = roi_tokens(dense, boxes, grid=4)
    assert tokens.shape == (2, 1, 16, 5)
    for row, col in itertools.product(range(4), range(4)):
        k = row * 4 + col
        # Cell-aligned boxes: roi_align (aligned, adaptive sampling) is the exact mean of the cells.
        torch.testing.assert_close(tokens[0, 0, k], dense[0, :, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2].mean((1, 2)))
        torch.testing.assert_close(tokens[1, 0, k], dense[1, :, row, 4 + col])
    # The reference pooled every box from batch element 0: image 1's tokens must not be those.
    assert not torch.allclose(tokens[1, 0], roi_tokens(dense[:1], boxes[1:], grid=4)[0, 0])
    # Swapping the batch order swaps the tokens.
    torch.testing.assert_close(roi_tokens(dense.flip(0), boxes.flip(0), grid=4), tokens.flip(0))


def test_roi_tokens_several_boxes_per_image_and_half_precision() -> None:
    with seeded(1):
        dense = torch.randn(1, 3, 4, 4)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    tokens = roi_tokens(dense, boxes, grid=2)
    assert tokens.shape == (1, 2, 4, 3)
    torch.testing.assert_close(tokens[0, 1, 3], dense[0, :, 3, 3])
    half = roi_tokens(dense.half(), boxes, grid=2)  # no CPU half kernel: pooled in float32
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), tokens, atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError):
        roi_tokens(dense, boxes.repeat(2, 1, 1))


# --------------------------------------------------------------------------------- dense features


def test_dense_features_are_the_last_blocks_value_path() -> None:
    encoder = DenseImageEncoder.tiny(0)
    pixels = encoder.preprocess([picture(0), picture(1)])
    assert pixels.shape == (2, 3, 64, 64)
    dense = encoder.dense(pixels)
    assert dense.shape == (2, 32, 8, 8)  # 64 px / patch 8, position embeddings interpolated from 4x4
    torch.testing.assert_close(dense.norm(dim=1), torch.ones(2, 8, 8))  # L2-normalised per location

    tower = encoder.tower
    with torch.no_grad():
        out = tower(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True)
        normal = torch.nn.functional.normalize(tower.post_layernorm(out.last_hidden_state[:, 1:]), dim=-1)
        normal = normal.transpose(1, 2).reshape(2, 32, 8, 8)
        # The normal last block, run with attention forced to the identity (each token sees only
        # itself), is the value path: the same features through transformers' own attention code.
        tokens = out.hidden_states[-2].shape[1]
        diagonal = torch.full((tokens, tokens), torch.finfo(torch.float32).min).fill_diagonal_(0.0)[None, None]
        identity = tower.encoder.layers[-1](out.hidden_states[-2], diagonal.expand(2, 1, tokens, tokens))
        identity = torch.nn.functional.normalize(tower.post_layernorm(identity[:, 1:]), dim=-1).transpose(1, 2).reshape(2, 32, 8, 8)
    torch.testing.assert_close(dense, identity, atol=1e-5, rtol=1e-5)
    assert (dense - normal).abs().max() > 0.05  # q-k attention really is gone


def test_open_clip_checkpoint_converts_to_the_same_model(tmp_path: Path) -> None:
    from open_clip.transformer import VisionTransformer
    from transformers import CLIPVisionModelWithProjection

    with seeded(3):
        visual = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_ratio=4.0, output_dim=16).eval()
        for param in visual.parameters():  # non-trivial LayerNorms and biases too
            param.data = torch.randn_like(param) * 0.3 + (1.0 if param.dim() == 1 and param.shape[0] == 32 else 0.0)
    # A CLIPSelf training checkpoint: nested state dict, DDP "module." prefix, text tower keys beside.
    state = {f"module.visual.{k}": v for k, v in visual.state_dict().items()}
    state["module.logit_scale"] = torch.tensor(4.6)
    state["module.token_embedding.weight"] = torch.zeros(10, 16)
    torch.save({"epoch": 6, "name": "clipself", "state_dict": state}, tmp_path / "epoch_6.pt")
    folder = convert_open_clip_checkpoint(tmp_path / "epoch_6.pt", tmp_path / "converted", num_heads=4)

    with seeded(4):
        pixels = torch.randn(2, 3, 32, 32)
    hf = CLIPVisionModelWithProjection.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=pixels).image_embeds, visual(pixels), atol=1e-4, rtol=1e-4)
        # The reference's dense path, written on OpenCLIP's own modules.
        x = visual._embeds(pixels)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        value = torch.nn.functional.linear(last.ln_1(x), last.attn.in_proj_weight, last.attn.in_proj_bias)[..., -32:]
        x = x + last.attn.out_proj(value)
        x = x + last.mlp(last.ln_2(x))
        expected = torch.nn.functional.normalize(visual.ln_post(x[:, 1:]), dim=-1).transpose(1, 2).reshape(2, 32, 4, 4)
    dense = DenseImageEncoder.from_pretrained(folder, input_size=32).dense(pixels)
    torch.testing.assert_close(dense, expected, atol=1e-4, rtol=1e-4)

    with seeded(5):
        scaled = VisionTransformer(image_size=32, patch_size=8, width=32, layers=1, heads=4, mlp_ratio=4.0, ls_init_value=0.1)
    torch.save(scaled.state_dict(), tmp_path / "layerscale.pt")
    with pytest.raises(RelbenchError) as excinfo:
        convert_open_clip_checkpoint(tmp_path / "layerscale.pt", tmp_path / "out", num_heads=4)
    assert "ls_1" in one_line(excinfo)


# ------------------------------------------------------------------------ the combined encoder


def test_tiny_tokens_are_17_global_then_16_local() -> None:
    encoder = tiny_local_encoder()
    images = [[picture(0), picture(1)], [picture(2), picture(3)]]
    tokens = encoder.encode(images)
    assert tokens.shape == (2, 2, 17 + 16, 32)
    torch.testing.assert_close(tokens[:, :, :17], encoder.subject.encode_images(images))
    # Local tokens = roi tokens of each image's own dense map over the whole image.
    dense = encoder.dense.encode([picture(i) for i in range(4)])
    whole = roi_tokens(dense, torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(4, 1, 4), 4).reshape(2, 2, 16, 32)
    torch.testing.assert_close(tokens[:, :, 17:], whole)
    assert encoder.encode_images(images).shape == tokens.shape  # the SubjectEncoder-compatible name


def test_each_subject_gets_its_own_images_tokens_and_order_follows() -> None:
    encoder = tiny_local_encoder()
    a, b, c, d = (picture(i) for i in range(4))
    boxes = [[(0.0, 0.0, 1.0, 1.0), (0.25, 0.25, 0.75, 1.0)], [(0.0, 0.5, 0.5, 1.0), (0.0, 0.0, 1.0, 1.0)]]
    tokens = encoder.encode([[a, b], [c, d]], boxes)
    swapped = encoder.encode([[c, d], [a, b]], boxes[::-1])
    torch.testing.assert_close(swapped, tokens.flip(0))
    local = tokens[:, :, 17:].reshape(4, 16, 32)
    for i, j in itertools.combinations(range(4), 2):
        assert not torch.allclose(local[i], local[j], atol=1e-3)
    # The same image with a smaller box: other local tokens, the same global tokens.
    whole = encoder.encode([[b]])
    boxed = encoder.encode([[b]], [[(0.25, 0.25, 0.75, 1.0)]])
    torch.testing.assert_close(boxed[:, :, :17], whole[:, :, :17])
    torch.testing.assert_close(boxed[0, 0, 17:], tokens[0, 1, 17:])
    assert (boxed[:, :, 17:] - whole[:, :, 17:]).abs().max() > 0.05


def test_tokens_are_deterministic_and_seeded() -> None:
    images = [[picture(5), picture(6)]]
    first = tiny_local_encoder(0).encode(images)
    assert torch.equal(first, tiny_local_encoder(0).encode(images))
    assert torch.equal(first, tiny_local_encoder(0).encode(images))
    other = DenseImageEncoder.tiny(7).encode([picture(5)])
    assert not torch.allclose(other, DenseImageEncoder.tiny(3).encode([picture(5)]))


def test_sdxl_sizes_give_257_global_plus_16_local_tokens() -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    from sdxl_shapes import BIGG_VISION_CONFIG

    config = CLIPVisionConfig(**BIGG_VISION_CONFIG)
    with torch.device("meta"):
        global_model = CLIPVisionModelWithProjection(config)
        dense_model = CLIPVisionModel(config)
    subject = SubjectEncoder(global_model, CLIPImageProcessor(), nn.Identity(), None)
    dense = DenseImageEncoder(dense_model)  # 896 px: a 64 x 64 patch grid
    assert (dense.input_size, dense.grid_size, dense.width) == (896, 64, 1664)
    encoder = LocalFeatureEncoder(subject, dense)
    tokens = encoder.encode([[picture(0), picture(1)]], [[(0.0, 0.2, 0.55, 0.85), (0.0, 0.0, 1.0, 1.0)]])
    assert tokens.shape == (1, 2, 257 + 16, 1664)
    with torch.device("meta"):
        resampler = GroundingResampler(MSAdapterConfig.sdxl())
        out = resampler(tokens, torch.empty(1, 2, 768), torch.empty(1, 2, 4))
    assert out.shape == (1, 2 * 16, 2048)


def test_the_resampler_sees_the_local_tokens() -> None:
    with seeded(0):
        resampler = GroundingResampler(MSAdapterConfig.tiny()).eval()
        tokens, phrases = torch.randn(2, 2, 33, 32), torch.randn(2, 2, 32)
    boxes = torch.tensor([[[0.0, 0.2, 0.55, 0.85], [0.55, 0.26, 0.95, 0.9]]] * 2)
    changed = tokens.clone()
    changed[1, 0, 17:] += 1.0  # only subject 0 of prompt 1, only its local tokens
    with torch.no_grad():
        before, after = resampler(tokens, phrases, boxes), resampler(changed, phrases, boxes)
    q = MSAdapterConfig.tiny().num_queries
    assert before.shape == (2, 2 * q, 64)
    assert (after[1, :q] - before[1, :q]).abs().max() > 1e-3
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[1, q:], before[1, q:])


# ------------------------------------------------------------------------------- subject boxes


def test_mask_boxes_are_the_subjects_extent_in_its_own_image() -> None:
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[6:15, 10:30] = 255
    assert mask_box(Image.fromarray(mask)) == pytest.approx((0.25, 0.2, 0.75, 0.5))
    assert mask_box(mask > 0) == pytest.approx((0.25, 0.2, 0.75, 0.5))
    assert mask_box(mask / 255.0) == pytest.approx((0.25, 0.2, 0.75, 0.5))
    images = [[picture(0), picture(1)]]
    assert subject_boxes(images) == [[(0.0, 0.0, 1.0, 1.0)] * 2]
    assert subject_boxes(images, [[None, Image.fromarray(mask)]])[0][1] == pytest.approx((0.25, 0.2, 0.75, 0.5))
    with pytest.raises(RelbenchError) as excinfo:
        subject_boxes(images, [[np.zeros((30, 40), dtype=bool), None]])
    assert "masks[0][0]" in one_line(excinfo) and "empty" in str(excinfo.value)
    with pytest.raises(RelbenchError) as excinfo:
        subject_boxes(images, [[None, np.ones((10, 10), dtype=bool)]])
    assert "masks[0][1] is 10x10 but its image is 40x30" in one_line(excinfo)


def test_bad_boxes_and_mismatched_widths_are_refused() -> None:
    encoder = tiny_local_encoder()
    with pytest.raises(RelbenchError) as excinfo:
        encoder.encode([[picture(0), picture(1)]], [[(0.0, 0.0, 1.0, 1.0), (0.6, 0.0, 0.4, 1.0)]])
    assert "boxes[0][1]" in one_line(excinfo)
    with pytest.raises(RelbenchError) as excinfo:
        encoder.encode([[picture(0), picture(1)]], [[(0.0, 0.0, 1.0, 1.0)]])
    assert "shape (1, 2, 4)" in one_line(excinfo)
    from transformers import CLIPVisionConfig, CLIPVisionModel

    wide = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=48, intermediate_size=37,
                                            num_hidden_layers=1, num_attention_heads=4))
    with pytest.raises(RelbenchError) as excinfo:
        LocalFeatureEncoder(encoder.subject, DenseImageEncoder(wide, input_size=64))
    assert "48 wide" in one_line(excinfo) and "32 wide" in str(excinfo.value)
    with pytest.raises(RelbenchError) as excinfo:
        DenseImageEncoder(wide, input_size=60)
    assert "multiple of the patch size 8" in one_line(excinfo)


# ------------------------------------------------------------------------ loading and storage


def test_dense_encoder_per_profile(tmp_path: Path) -> None:
    with pytest.raises(RelbenchError) as excinfo:
        dense_encoder_for(RunContext(profile="full", device="cpu"))
    assert "--model dense_encoder=DIR" in one_line(excinfo)
    tiny = dense_encoder_for(RunContext(profile="tiny", device="cpu", seed=0))
    assert tiny.source == "tiny:dense-encoder" and tiny.grid_size == 8
    assert torch.equal(tiny.encode([picture(0)]), DenseImageEncoder.tiny(3).encode([picture(0)]))

    tiny_dense_model(11).save_pretrained(str(tmp_path / "dense"))
    context = RunContext(profile="full", device="cpu", model_overrides={"dense_encoder": str(tmp_path / "dense")})
    loaded = dense_encoder_for(context)
    assert loaded.input_size == 896 and loaded.grid_size == 112
    assert torch.equal(loaded.model.embeddings.class_embedding, tiny_dense_model(11).embeddings.class_embedding)
    with pytest.raises(RelbenchError) as excinfo:
        DenseImageEncoder.from_pretrained(tmp_path / "nowhere")
    assert "convert_open_clip_checkpoint" in one_line(excinfo)
    # A folder whose config promises a third block the weights lack: refused, not left random.
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    (tmp_path / "dense" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(RelbenchError) as excinfo:
        DenseImageEncoder.from_pretrained(tmp_path / "dense")
    assert "encoder.layers.2." in one_line(excinfo)


def test_trained_resampler_is_stored_with_its_local_grid(tmp_path: Path) -> None:
    with seeded(0):
        trained = GroundingResampler(MSAdapterConfig.tiny())
    path = save_resampler(trained, tmp_path, local_grid=4, metadata={"relbench_relation": "hug"})
    assert path == tmp_path / RESAMPLER_WEIGHT_NAME
    with seeded(1):
        fresh = GroundingResampler(MSAdapterConfig.tiny())
    load_resampler(fresh, path, local_grid=4)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with pytest.raises(RelbenchError) as excinfo:
        load_resampler(fresh, path, local_grid=None)
    assert "trained with 4x4 local features but used with no local features" in one_line(excinfo)
    save_resampler(trained, tmp_path / "plain", local_grid=None)
    with pytest.raises(RelbenchError) as excinfo:
        load_resampler(fresh, tmp_path / "plain" / RESAMPLER_WEIGHT_NAME, local_grid=4)
    assert "trained with no local features" in one_line(excinfo)
    with pytest.raises(RelbenchError) as excinfo:
        load_resampler(GroundingResampler(MSAdapterConfig.tiny()), tmp_path / "missing.safetensors", local_grid=4)
    assert "--train-resampler" in one_line(excinfo)
    import dataclasses

    other = GroundingResampler(dataclasses.replace(MSAdapterConfig.tiny(), resampler_dim=16, heads=2))
    with pytest.raises(RelbenchError) as excinfo:
        load_resampler(other, path, local_grid=4)
    assert "not this resampler's weights" in one_line(excinfo)
