"""The MS-Diffusion adapter: public weight format, masked decoupled attention, resampler, generation."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relbench.errors import RelbenchError
from relbench.methods.ms_diffusion.adapter import MSAdapter
from relbench.methods.ms_diffusion.attention import (
    AttentionStore, LayoutCache, MSAttnProcessor, SelfAttnProcessor, box_masks, layer_grid,
)
from relbench.methods.ms_diffusion.config import MSAdapterConfig
from relbench.methods.ms_diffusion.encoders import SubjectEncoder
from relbench.methods.ms_diffusion.pipeline import generate_with_layout
from relbench.methods.ms_diffusion.resampler import GroundingResampler, fourier_box_embedding
from relbench.tiny import seeded, tiny_sdxl_components

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = MSAdapterConfig.tiny()

from sdxl_shapes import SDXL_UNET_CONFIG  # noqa: E402  (public config facts, tests/sdxl_shapes.py)


def one_line_error(excinfo: pytest.ExceptionInfo[RelbenchError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def test_ms_diffusion_package_is_listed_in_pyproject() -> None:
    packages = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert "relbench.methods.ms_diffusion" in packages


# ------------------------------------------------------------------------------------ weights


def test_sdxl_adapter_has_the_public_key_names_and_shapes() -> None:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        adapter = MSAdapter(MSAdapterConfig.sdxl(), unet)
    state = adapter.public_state_dict()
    assert list(state) == ["image_proj", "ms_adapter", "dummy_image_tokens"]

    # image_proj: grounding resampler, width 1280, 4 layers, 16 queries, in 1664, out 2048,
    # grounding input 768 + 64 -> 1664 -> 1280 * 16.
    expected = {
        "grounding_latents": (1, 16, 1280),
        "latent_proj.0.weight": (1664, 832), "latent_proj.0.bias": (1664,),
        "latent_proj.2.weight": (20480, 1664), "latent_proj.2.bias": (20480,),
        "latent_norm.weight": (1280,), "latent_norm.bias": (1280,),
        "proj_in.weight": (1280, 1664), "proj_in.bias": (1280,),
        "attention_norm.weight": (1280,), "attention_norm.bias": (1280,),
        "proj_out.weight": (2048, 1280), "proj_out.bias": (2048,),
        "norm_out.weight": (2048,), "norm_out.bias": (2048,),
    }
    for i in range(4):
        expected.update({
            f"layers.{i}.0.norm1.weight": (1280,), f"layers.{i}.0.norm1.bias": (1280,),
            f"layers.{i}.0.norm2.weight": (1280,), f"layers.{i}.0.norm2.bias": (1280,),
            f"layers.{i}.0.to_q.weight": (1280, 1280), f"layers.{i}.0.to_kv.weight": (2560, 1280),
            f"layers.{i}.0.to_out.weight": (1280, 1280),
            f"layers.{i}.1.0.weight": (1280,), f"layers.{i}.1.0.bias": (1280,),
            f"layers.{i}.1.1.weight": (5120, 1280), f"layers.{i}.1.3.weight": (1280, 5120),
        })
    assert {k: tuple(v.shape) for k, v in state["image_proj"].items()} == expected

    # ms_adapter: one entry per attn2, keyed by its index among all 140 processors (attn1, attn2
    # alternate), in processor order: down_blocks.1 (2 x 1 blocks, 640), down_blocks.2 (2 x 10,
    # 1280), up_blocks.0 (3 x 10, 1280), up_blocks.1 (3 x 2, 640), mid_block (10, 1280).
    widths = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
    expected_adapter = {}
    for ordinal, width in enumerate(widths):
        for name in ("to_k_ip", "to_v_ip"):
            expected_adapter[f"{2 * ordinal + 1}.{name}.weight"] = (width, 2048)
    assert len(expected_adapter) == 140
    assert {k: tuple(v.shape) for k, v in state["ms_adapter"].items()} == expected_adapter
    assert tuple(state["dummy_image_tokens"].shape) == (1, 4, 2048)
    assert MSAdapterConfig.sdxl().context_tokens(2) == 77 + 4 + 32


@pytest.fixture(scope="module")
def tiny_pipe():
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(0), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_adapter(tiny_pipe) -> MSAdapter:
    with seeded(1):
        adapter = MSAdapter(TINY, tiny_pipe.unet)
        # Random dummy tokens and k/v projections big enough that masking mistakes show.
        for p in adapter.processors():
            torch.nn.init.normal_(p.to_k_ip.weight, std=0.3)
            torch.nn.init.normal_(p.to_v_ip.weight, std=0.3)
    adapter.install(tiny_pipe.unet)
    return adapter


def assert_same_weights(a: MSAdapter, b: MSAdapter) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key].to(sa[key].dtype), rtol=0, atol=0, msg=key)


def test_from_pretrained_loads_the_public_layout_from_file_folder_safetensors_and_dict(tiny_pipe, tiny_adapter, tmp_path) -> None:
    # A public-format file written with plain torch.save of the three named parts.
    torch.save(
        {"image_proj": dict(tiny_adapter.image_proj.state_dict()), "ms_adapter": dict(tiny_adapter.ms_adapter.state_dict()),
         "dummy_image_tokens": torch.nn.Parameter(tiny_adapter.dummy_image_tokens.detach().clone())},
        tmp_path / "ms_adapter.bin",
    )
    keys = set(torch.load(tmp_path / "ms_adapter.bin", weights_only=True)["ms_adapter"])
    assert keys == {f"{i}.{n}.weight" for i in range(1, 24, 2) for n in ("to_k_ip", "to_v_ip")}

    unet = tiny_pipe.unet
    from_file = MSAdapter.from_pretrained(tmp_path / "ms_adapter.bin", TINY, unet)
    from_folder = MSAdapter.from_pretrained(str(tmp_path), TINY, unet)
    from_dict = MSAdapter.from_pretrained(tiny_adapter.public_state_dict(), TINY, unet)
    st = tiny_adapter.save(tmp_path / "sub" / "ms_adapter.safetensors")
    from_st = MSAdapter.from_pretrained(tmp_path, TINY, unet, weight_name="ms_adapter.safetensors", subfolder="sub")
    for loaded in (from_file, from_folder, from_dict, from_st):
        assert_same_weights(tiny_adapter, loaded)
        assert len(list(loaded.parameters())) == len(list(tiny_adapter.parameters()))
        assert all(p.device.type == "cpu" for p in loaded.parameters())
        assert not loaded.is_installed(unet)
    assert from_file.loaded_from["file"] == str(tmp_path / "ms_adapter.bin")
    assert from_st.loaded_from["file"] == str(st)
    # The dict source is copied, not aliased.
    assert from_dict.dummy_image_tokens.data_ptr() != tiny_adapter.dummy_image_tokens.data_ptr()

    half = MSAdapter.from_pretrained(tmp_path / "ms_adapter.bin", TINY, _half_unet(tiny_pipe))
    assert half.dummy_image_tokens.dtype == torch.float16
    assert half.processors()[0].to_k_ip.weight.dtype == torch.float16


def _half_unet(pipe):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(pipe.unet.config).to(torch.float16)


def _public(adapter: MSAdapter) -> dict:
    return {k: (dict(v) if isinstance(v, dict) else v.clone()) for k, v in adapter.public_state_dict().items()}


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_from_pretrained_refuses_broken_files_with_one_line(tiny_pipe, tiny_adapter, tmp_path) -> None:
    unet = tiny_pipe.unet
    cases = {}

    missing = _public(tiny_adapter)
    del missing["ms_adapter"]["5.to_v_ip.weight"]
    cases["missing"] = (missing, ["missing key", "ms_adapter.5.to_v_ip.weight", "(64, 64)"])

    wrong = _public(tiny_adapter)
    wrong["image_proj"]["proj_in.weight"] = torch.zeros(32, 31)
    cases["shape"] = (wrong, ["image_proj.proj_in.weight", "(32, 31)", "expected (32, 32)"])

    extra = _public(tiny_adapter)
    extra["ms_adapter"]["2.to_k_ip.weight"] = torch.zeros(64, 64)
    cases["unexpected"] = (extra, ["unexpected key", "ms_adapter.2.to_k_ip.weight"])

    no_part = _public(tiny_adapter)
    del no_part["dummy_image_tokens"]
    cases["no part"] = (no_part, ["missing top-level key 'dummy_image_tokens'"])

    for name, (state, needles) in cases.items():
        with pytest.raises(RelbenchError) as excinfo:
            MSAdapter.from_pretrained(state, TINY, unet)
        message = one_line_error(excinfo)
        for needle in needles:
            assert needle in message, (name, message)

    good = tiny_adapter.save(tmp_path / "good.bin")
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(RelbenchError) as excinfo:
        MSAdapter.from_pretrained(truncated, TINY, unet)
    assert str(truncated) in one_line_error(excinfo) and "complete" in str(excinfo.value)

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.bin"
    torch.save({"image_proj": _Evil(marker)}, evil)
    with pytest.raises(RelbenchError) as excinfo:
        MSAdapter.from_pretrained(evil, TINY, unet)
    assert "refused" in one_line_error(excinfo) and str(evil) in str(excinfo.value)
    assert not marker.exists()

    # The SDXL-sized config against the tiny UNet, and a tiny file against a bigger config.
    with pytest.raises(RelbenchError) as excinfo:
        MSAdapter.from_pretrained(good, MSAdapterConfig.sdxl(), unet)
    assert "cross_attention_dim 2048" in one_line_error(excinfo)
    bigger = MSAdapterConfig(**{**TINY.__dict__, "num_queries": 8})
    with pytest.raises(RelbenchError) as excinfo:
        MSAdapter.from_pretrained(good, bigger, unet)
    assert "image_proj.grounding_latents" in one_line_error(excinfo)

    with pytest.raises(RelbenchError) as excinfo:
        MSAdapter.from_pretrained(tmp_path / "nope" / "ms_adapter.bin", TINY, unet)
    assert "no such file" in one_line_error(excinfo)
    with pytest.raises(RelbenchError) as excinfo:
        MSAdapter.from_pretrained(tmp_path, TINY, unet, weight_name="absent.bin")
    assert "no absent.bin in this folder" in one_line_error(excinfo)
    # HF_HUB_OFFLINE=1 (conftest): a hub id that is not cached fails at once, in one line.
    with pytest.raises(RelbenchError) as excinfo:
        MSAdapter.from_pretrained("relbench-test/no-such-ms-adapter", TINY, unet)
    assert "relbench-test/no-such-ms-adapter" in one_line_error(excinfo)


# ---------------------------------------------------------------------------------- resampler


def test_fourier_box_embedding_lists_sin_then_cos_per_frequency() -> None:
    box = torch.tensor([[0.1, 0.2, 0.7, 0.9]])
    emb = fourier_box_embedding(box, 8)
    assert emb.shape == (1, 64)
    for k in range(8):
        freq = 100 ** (k / 8)
        for c, x in enumerate([0.1, 0.2, 0.7, 0.9]):
            assert emb[0, k * 8 + c].item() == pytest.approx(math.sin(freq * x), abs=1e-5)
            assert emb[0, k * 8 + 4 + c].item() == pytest.approx(math.cos(freq * x), abs=1e-5)


@pytest.mark.parametrize("num_subjects", [2, 3])
def test_resampler_shapes_and_each_subject_depends_on_its_own_inputs(num_subjects: int) -> None:
    with seeded(0):
        resampler = GroundingResampler(TINY).eval()
        images = torch.randn(2, num_subjects, 17, 32)
        phrases = torch.randn(2, num_subjects, 32)
    boxes = torch.tensor([[0.0, 0.2, 0.45, 0.85], [0.45, 0.2, 0.7, 0.85], [0.55, 0.25, 0.95, 0.9]])[:num_subjects]
    boxes = boxes.expand(2, -1, -1).clone()
    out = resampler(images, phrases, boxes)
    assert out.shape == (2, num_subjects * 4, 64)

    moved = boxes.clone()
    moved[:, 1] = torch.tensor([0.1, 0.1, 0.3, 0.3])
    out_moved = resampler(images, phrases, moved)
    q = TINY.num_queries
    # Queries come from the boxes: moving subject 1's box changes its tokens, and only its tokens.
    assert (out_moved[:, q : 2 * q] - out[:, q : 2 * q]).abs().max() > 1e-3
    torch.testing.assert_close(torch.cat([out_moved[:, :q], out_moved[:, 2 * q :]], 1), torch.cat([out[:, :q], out[:, 2 * q :]], 1))

    other_image = images.clone()
    other_image[:, 0] = torch.randn(2, 17, 32)
    out_img = resampler(other_image, phrases, boxes)
    assert (out_img[:, :q] - out[:, :q]).abs().max() > 1e-3
    torch.testing.assert_close(out_img[:, q:], out[:, q:])

    # Dropped grounding: the learned latents replace the box/phrase queries.
    drop = torch.ones(2, num_subjects, dtype=torch.bool)
    torch.testing.assert_close(resampler(images, phrases, boxes, drop), resampler(images, phrases.flip(0), moved, drop))


# ---------------------------------------------------------------------------------- attention


def test_layer_grid_follows_the_unet_downsampling() -> None:
    assert layer_grid(64 * 64, None) == (64, 64)
    assert layer_grid(48 * 64, (96, 128)) == (48, 64)  # SDXL 768 x 1024, first attention level
    assert layer_grid(24 * 32, (96, 128)) == (24, 32)
    assert layer_grid(13 * 20, (50, 80)) == (13, 20)  # odd sides round up: 50 -> 25 -> 13
    with pytest.raises(ValueError, match="not a square"):
        layer_grid(48 * 64, None)
    with pytest.raises(ValueError, match="no downsampling"):
        layer_grid(100, (96, 128))


def test_box_masks_cover_floor_start_to_ceil_end() -> None:
    # 4 rows x 6 cols; x in [0.2, 0.6) -> cols floor(1.2)=1 .. ceil(3.6)=4 (exclusive); y 0.3..0.5 -> rows 1.
    mask = box_masks(torch.tensor([[[0.2, 0.3, 0.6, 0.5]]]), 4, 6)[0, :, 0].view(4, 6)
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[1, 1:4] = True
    assert torch.equal(mask, expected)
    assert not box_masks(torch.zeros(1, 1, 4), 4, 6).any()  # zero boxes cover nothing


ROWS, COLS = 4, 6
BOX_A = (0.0, 0.0, 0.5, 0.75)  # cols 0-2, rows 0-2
BOX_B = (0.25, 0.5, 1.0, 1.0)  # cols 1-5 (floor 1.5), rows 2-3; overlaps A at row 2, cols 1-2


def cells(box: tuple[float, float, float, float]) -> set[int]:
    col0, col1 = math.floor(box[0] * COLS), math.ceil(box[2] * COLS)
    row0, row1 = math.floor(box[1] * ROWS), math.ceil(box[3] * ROWS)
    return {r * COLS + c for r in range(row0, row1) for c in range(col0, col1)}


A_CELLS, B_CELLS = cells(BOX_A), cells(BOX_B)
assert A_CELLS & B_CELLS == {2 * COLS + 1, 2 * COLS + 2}


@pytest.fixture(scope="module")
def attn_setup():
    """One diffusers cross-attention layer (32 wide, 4 heads) + our processor, and inputs."""
    from diffusers.models.attention_processor import Attention

    with seeded(3):
        attn = Attention(query_dim=32, cross_attention_dim=64, heads=4, dim_head=8).eval()
        processor = MSAttnProcessor(32, TINY, name="test.attn2.processor")
        hidden = torch.randn(2, ROWS * COLS, 32)
        context = torch.randn(2, TINY.context_tokens(2), 64)
    attn.set_processor(processor)
    boxes = torch.tensor([BOX_A, BOX_B]).expand(2, -1, -1).clone()
    return attn, processor, hidden, context, boxes


def run(attn, hidden, context, boxes, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return attn(hidden, encoder_hidden_states=context, ms_boxes=boxes, ms_size=(2 * ROWS, 2 * COLS), **kwargs)


def text_only(attn, hidden, context) -> torch.Tensor:
    from diffusers.models.attention_processor import AttnProcessor2_0

    with torch.no_grad():
        return AttnProcessor2_0()(attn, hidden, context[:, : TINY.text_tokens])


def changed_positions(a: torch.Tensor, b: torch.Tensor) -> list[set[int]]:
    diff = (a - b).abs().amax(dim=-1)  # (B, Q)
    return [set(torch.nonzero(row > 1e-6).flatten().tolist()) for row in diff]


def test_subject_tokens_only_reach_their_own_box(attn_setup) -> None:
    attn, _, hidden, context, boxes = attn_setup
    base = run(attn, hidden, context, boxes)
    d, q, t = TINY.num_dummy_tokens, TINY.num_queries, TINY.text_tokens
    for subject, expected in ((0, A_CELLS), (1, B_CELLS)):
        perturbed = context.clone()
        start = t + d + subject * q
        perturbed[:, start : start + q] += torch.randn(2, q, 64)
        assert changed_positions(run(attn, hidden, perturbed, boxes), base) == [expected, expected]


def test_dummy_tokens_never_reach_the_output_and_background_is_text_only(attn_setup) -> None:
    attn, _, hidden, context, boxes = attn_setup
    base = run(attn, hidden, context, boxes)
    perturbed = context.clone()
    perturbed[:, TINY.text_tokens : TINY.text_tokens + TINY.num_dummy_tokens] += 5 * torch.randn(2, 4, 64)
    # Masked in the boxes, zeroed outside them (as in the reference): no effect anywhere.
    torch.testing.assert_close(run(attn, hidden, perturbed, boxes), base, rtol=0, atol=0)

    reference = text_only(attn, hidden, context)
    background = sorted(set(range(ROWS * COLS)) - A_CELLS - B_CELLS)
    torch.testing.assert_close(base[:, background], reference[:, background], rtol=0, atol=1e-6)
    foreground = sorted(A_CELLS | B_CELLS)
    assert (base[:, foreground] - reference[:, foreground]).abs().amax(-1).min() > 1e-4


def test_scale_zero_and_zero_boxes_equal_text_only_attention(attn_setup) -> None:
    attn, _, hidden, context, boxes = attn_setup
    reference = text_only(attn, hidden, context)
    torch.testing.assert_close(run(attn, hidden, context, boxes, ms_scale=0.0), reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(run(attn, hidden, context, torch.zeros_like(boxes)), reference, rtol=0, atol=1e-6)
    # The scale weights the image branch linearly.
    half = run(attn, hidden, context, boxes, ms_scale=0.3) - reference
    full = run(attn, hidden, context, boxes, ms_scale=0.6) - reference
    torch.testing.assert_close(full, 2 * half, rtol=1e-4, atol=1e-5)


def reference_attention(attn, processor, hidden, context, boxes, scale) -> torch.Tensor:
    """The masked decoupled attention written out per sample, head and position."""
    t, d, q = TINY.text_tokens, TINY.num_dummy_tokens, TINY.num_queries
    heads, hd = attn.heads, 8
    query, key, value = attn.to_q(hidden), attn.to_k(context[:, :t]), attn.to_v(context[:, :t])
    ikey, ivalue = processor.to_k_ip(context[:, t:]), processor.to_v_ip(context[:, t:])
    out = torch.zeros(hidden.shape[0], hidden.shape[1], heads * hd)
    for b in range(hidden.shape[0]):
        for h in range(heads):
            sl = slice(h * hd, (h + 1) * hd)
            qh = query[b, :, sl]
            text_probs = torch.softmax(qh @ key[b, :, sl].T / math.sqrt(hd), dim=-1)
            image_scores = qh @ ikey[b, :, sl].T / math.sqrt(hd)
            for pos in range(hidden.shape[1]):
                row, col = divmod(pos, COLS)
                inside = [
                    i for i, (x0, y0, x1, y1) in enumerate(boxes[b].tolist())
                    if math.floor(x0 * COLS) <= col < math.ceil(x1 * COLS) and math.floor(y0 * ROWS) <= row < math.ceil(y1 * ROWS)
                ]
                bias = torch.tensor([
                    (-10000.0 if inside else 0.0) if j < d else (0.0 if (j - d) // q in inside else -10000.0)
                    for j in range(ikey.shape[1])
                ])
                image_out = torch.softmax(image_scores[pos] + bias, dim=-1) @ ivalue[b, :, sl] if inside else torch.zeros(hd)
                out[b, pos, sl] = text_probs[pos] @ value[b, :, sl] + scale * image_out
    return attn.to_out[0](out)


def test_processor_matches_an_explicit_reference_computation(attn_setup) -> None:
    attn, processor, hidden, context, _ = attn_setup
    # Different layouts per sample, overlapping boxes in the first.
    boxes = torch.tensor([[BOX_A, BOX_B], [(0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 0.34, 1.0)]])
    with torch.no_grad():
        expected = reference_attention(attn, processor, hidden, context, boxes, 0.6)
    torch.testing.assert_close(run(attn, hidden, context, boxes), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(run(attn, hidden, context, boxes, ms_scale=1.3),
                               _no_grad(reference_attention, attn, processor, hidden, context, boxes, 1.3), rtol=0, atol=1e-5)


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def test_attention_store_records_text_maps_of_small_layers(attn_setup) -> None:
    attn, _, hidden, context, boxes = attn_setup
    plain = run(attn, hidden, context, boxes)
    store = AttentionStore(max_queries=ROWS * COLS)
    recorded = run(attn, hidden, context, boxes, ms_store=store)
    torch.testing.assert_close(recorded, plain, rtol=0, atol=1e-5)  # explicit path == SDPA path
    assert len(store.maps) == 1 and store.names == ["test.attn2.processor"]
    maps = store.maps[0]
    assert maps.shape == (2, ROWS * COLS, 77)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, ROWS * COLS))
    assert maps.min() >= 0 and maps.std() > 1e-4  # real, non-uniform probabilities
    with torch.no_grad():  # the head average of each head's softmax over the text tokens
        q = attn.to_q(hidden).view(2, -1, 4, 8).transpose(1, 2)
        k = attn.to_k(context[:, :77]).view(2, -1, 4, 8).transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1).mean(dim=1)
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-6)
    store.clear()
    assert store.maps == [] and store.names == []
    small = AttentionStore(max_queries=ROWS * COLS - 1)
    run(attn, hidden, context, boxes, ms_store=small)
    assert small.maps == []


def test_samples_without_boxes_skip_image_attention_and_match_the_reference(attn_setup) -> None:
    # Classifier-free guidance layout: the unconditional sample has zero boxes (and zero tokens).
    attn, processor, hidden, context, _ = attn_setup
    boxes = torch.tensor([[(0.0, 0.0, 0.0, 0.0)] * 2, [BOX_A, BOX_B]])
    seen = []
    handle = processor.to_k_ip.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    try:
        out = run(attn, hidden, context, boxes, ms_cache=LayoutCache())
        plain = run(attn, hidden, context, boxes)  # no cache (training): every sample, no host sync to find them
    finally:
        handle.remove()
    assert seen == [1, 2]  # with a cache only the sample with boxes is projected and attended
    torch.testing.assert_close(out, _no_grad(reference_attention, attn, processor, hidden, context, boxes, 0.6), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[0], text_only(attn, hidden, context)[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(plain, out, rtol=0, atol=1e-6)


def test_layout_cache_builds_masks_once_per_resolution_and_image_keys_once_per_layer(attn_setup, monkeypatch) -> None:
    attn, processor, _, context, boxes = attn_setup
    built = []

    def spy(b, rows, cols):
        built.append((rows, cols))
        return box_masks(b, rows, cols)

    monkeypatch.setattr("relbench.methods.ms_diffusion.attention.box_masks", spy)
    projections = []
    handles = [layer.register_forward_hook(lambda module, args, out: projections.append(module))
               for layer in (processor.to_k_ip, processor.to_v_ip)]
    cache = LayoutCache()
    with seeded(5):
        fine, coarse = torch.randn(2, ROWS * COLS, 32), torch.randn(2, (ROWS // 2) * (COLS // 2), 32)
    try:
        outs = {}
        for step in range(3):  # three "denoising steps", each with a layer at two resolutions
            for name, hidden in (("fine", fine), ("coarse", coarse)):
                outs[name, step] = run(attn, hidden, context, boxes, ms_cache=cache)
    finally:
        for handle in handles:
            handle.remove()
    assert built == [(ROWS, COLS), (ROWS // 2, COLS // 2)]
    assert len(projections) == 2  # to_k_ip and to_v_ip once, not per step
    for name, hidden in (("fine", fine), ("coarse", coarse)):
        uncached = run(attn, hidden, context, boxes)
        for step in range(3):
            torch.testing.assert_close(outs[name, step], uncached, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one cache per pipeline call"):
        run(attn, fine[:1], context[:1], boxes[:1], ms_cache=cache)
    cache.clear()
    assert len(cache) == 0


def test_processor_refuses_inconsistent_inputs(attn_setup) -> None:
    attn, _, hidden, context, boxes = attn_setup
    with pytest.raises(ValueError, match="no ms_boxes"):
        run(attn, hidden, context, None)
    with pytest.raises(ValueError, match="expected 4 dummy \\+ 3 subjects"):
        run(attn, hidden, context, torch.cat([boxes, boxes[:, :1]], 1))
    with pytest.raises(ValueError, match="not a square"):
        with torch.no_grad():
            attn(hidden, encoder_hidden_states=context, ms_boxes=boxes)


# ------------------------------------------------------------------------------- in the UNet


def test_install_sets_processors_and_the_store_sees_every_small_cross_attention(tiny_pipe, tiny_adapter) -> None:
    unet = tiny_pipe.unet
    processors = unet.attn_processors
    assert tiny_adapter.is_installed(unet)
    assert sum(isinstance(p, MSAttnProcessor) for p in processors.values()) == 12
    assert all(isinstance(p, SelfAttnProcessor) for n, p in processors.items() if n.endswith("attn1.processor"))
    tiny_adapter.install(unet)  # idempotent
    assert tiny_adapter.is_installed(unet)

    with seeded(4):
        latents = torch.randn(2, 4, 32, 32)
        text = torch.randn(2, 77, 64)
        embeds = (torch.randn(2, 2, 17, 32), torch.randn(2, 2, 32))
    boxes = torch.tensor([[BOX_A, BOX_B]] * 2)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        context = torch.cat([text, tiny_adapter.image_context(*embeds, boxes)], 1)
        assert context.shape == (2, 77 + 4 + 8, 64)
        store = AttentionStore(max_queries=256)  # the tiny UNet attends at 16 x 16 only
        kwargs = tiny_adapter.cross_attention_kwargs(boxes, store=store)
        out = unet(latents, 10, context, added_cond_kwargs=added, cross_attention_kwargs=kwargs).sample
        assert len(store.maps) == 12 and all(m.shape == (2, 256, 77) for m in store.maps)
        none = AttentionStore(max_queries=255)
        out_none = unet(latents, 10, context, added_cond_kwargs=added,
                        cross_attention_kwargs=tiny_adapter.cross_attention_kwargs(boxes, store=none)).sample
        assert none.maps == []
        torch.testing.assert_close(out, out_none, rtol=0, atol=1e-5)
        moved = unet(latents, 10, context, added_cond_kwargs=added,
                     cross_attention_kwargs=tiny_adapter.cross_attention_kwargs(boxes.flip(1))).sample
        assert (moved - out).abs().max() > 1e-4


# ---------------------------------------------------------------------------------- encoders


def photos(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(n)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(n)]


def test_tiny_subject_encoder_shapes_and_pooled_phrase_embeddings(tiny_pipe) -> None:
    encoder = SubjectEncoder.tiny(tiny_pipe)
    images = encoder.encode_images([photos(3), photos(3)[::-1]])
    assert images.shape == (2, 3, TINY.image_tokens, TINY.image_embed_dim)
    torch.testing.assert_close(images[0, 0], images[1, 2])  # same photo, same tokens
    # Penultimate hidden states of the 512 px -> processor pipeline, not the last layer's.
    pixels_in = encoder.image_processor(images=[photos(3)[0].resize((512, 512), Image.Resampling.BICUBIC)], return_tensors="pt").pixel_values
    with torch.no_grad():
        hidden = encoder.image_encoder(pixel_values=pixels_in, output_hidden_states=True).hidden_states
    torch.testing.assert_close(images[0, 0], hidden[-2][0])
    assert (hidden[-1][0] - images[0, 0]).abs().max() > 1e-3
    phrases = encoder.encode_phrases([["dog", "cat", "plushie bear"], ["cat", "dog", "dog"]])
    assert phrases.shape == (2, 3, TINY.phrase_embed_dim)
    ids = encoder.tokenizer(["dog"], max_length=77, padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        direct = tiny_pipe.text_encoder(ids).pooler_output[0]
    torch.testing.assert_close(phrases[0, 0], direct)
    torch.testing.assert_close(phrases[1, 1], phrases[1, 2])
    assert (phrases[0, 0] - phrases[0, 1]).abs().max() > 1e-4
    with pytest.raises(RelbenchError, match="same number of subjects"):
        encoder.encode_phrases([["dog", "cat"], ["dog"]])


def test_subject_encoder_from_a_missing_path_is_a_clear_error(tiny_pipe, tmp_path) -> None:
    with pytest.raises(RelbenchError) as excinfo:
        SubjectEncoder.from_pretrained(tiny_pipe, tmp_path / "no-clip-here")
    assert "no-clip-here" in one_line_error(excinfo)


# -------------------------------------------------------------------------------- generation

SETTINGS = dict(num_inference_steps=2, guidance_scale=5.0, negative_prompt="monochrome, lowres", scale=0.6)
TWO = [(0.0, 0.2, 0.55, 0.85), (0.55, 0.26, 0.95, 0.90)]
THREE = [(0.0, 0.2, 0.45, 0.85), (0.45, 0.2, 0.7, 0.85), (0.55, 0.25, 0.95, 0.9)]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_generate_with_layout_is_deterministic_and_follows_the_boxes(tiny_pipe, tiny_adapter, monkeypatch) -> None:
    encoder = SubjectEncoder.tiny(tiny_pipe)
    # 32 px images: 16 x 16 latents, cross-attention at 8 x 8 in the tiny UNet.
    two = dict(prompts=["a dog is hugging a cat", "a cat next to a dog"], subject_images=[photos(2), photos(2)[::-1]],
               phrases=[["dog", "cat"], ["cat", "dog"]], boxes=[TWO, TWO], width=32, height=32, **SETTINGS)
    first = generate_with_layout(tiny_pipe, tiny_adapter, encoder, seeds=[42, 7], **two)
    again = generate_with_layout(tiny_pipe, tiny_adapter, encoder, seeds=[42, 7], **two)
    assert [im.size for im in first] == [(32, 32), (32, 32)]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(first, again))
    # First prompt: same seed, boxes swapped. Second prompt: same boxes, another seed.
    changed = generate_with_layout(tiny_pipe, tiny_adapter, encoder, seeds=[42, 8], **dict(two, boxes=[TWO[::-1], TWO]))
    assert np.abs(pixels(changed[0]) - pixels(first[0])).max() > 5
    assert np.abs(pixels(changed[1]) - pixels(first[1])).max() > 5

    # Three subjects in a non-square image: the processors get the latent size (rows, cols).
    grids = []

    def spy(num_queries, latent_size):
        grids.append((num_queries, latent_size))
        return layer_grid(num_queries, latent_size)

    monkeypatch.setattr("relbench.methods.ms_diffusion.attention.layer_grid", spy)
    three = generate_with_layout(
        tiny_pipe, tiny_adapter, encoder, prompts=["a dog, a cat and a bear"], subject_images=[photos(3)],
        phrases=[["dog", "cat", "bear"]], boxes=[THREE], seeds=[42], width=32, height=24, **SETTINGS,
    )
    assert three[0].size == (32, 24) and pixels(three[0]).std() > 1.0
    assert set(grids) == {(6 * 8, (12, 16))}


def test_generate_with_scale_zero_is_plain_sdxl(tiny_pipe, tiny_adapter) -> None:
    from diffusers import StableDiffusionXLPipeline

    encoder = SubjectEncoder.tiny(tiny_pipe)
    ours = generate_with_layout(
        tiny_pipe, tiny_adapter, encoder, prompts=["a dog is hugging a cat"], subject_images=[photos(2)],
        phrases=[["dog", "cat"]], boxes=[TWO], seeds=[5], width=32, height=32, **{**SETTINGS, "scale": 0.0},
    )[0]
    plain = StableDiffusionXLPipeline(**tiny_sdxl_components(0), add_watermarker=False)  # default processors
    plain.set_progress_bar_config(disable=True)
    expected = plain(prompt=["a dog is hugging a cat"], negative_prompt=[SETTINGS["negative_prompt"]], num_inference_steps=2,
                     guidance_scale=5.0, width=32, height=32, generator=[torch.Generator().manual_seed(5)]).images[0]
    assert np.abs(pixels(ours) - pixels(expected)).max() <= 1
    with_image = generate_with_layout(
        tiny_pipe, tiny_adapter, encoder, prompts=["a dog is hugging a cat"], subject_images=[photos(2)],
        phrases=[["dog", "cat"]], boxes=[TWO], seeds=[5], width=32, height=32, **SETTINGS,
    )[0]
    assert np.abs(pixels(with_image) - pixels(expected)).max() > 5


def test_generate_projects_image_tokens_once_per_layer_and_builds_masks_once_per_call(tiny_pipe, tiny_adapter, monkeypatch) -> None:
    encoder = SubjectEncoder.tiny(tiny_pipe)
    masks = []
    monkeypatch.setattr("relbench.methods.ms_diffusion.attention.box_masks",
                        lambda b, rows, cols: masks.append((rows, cols)) or box_masks(b, rows, cols))
    calls: dict[str, list[int]] = {}
    handles = [
        layer.register_forward_hook(lambda module, args, out, key=f"{p.name}.{kind}": calls.setdefault(key, []).append(args[0].shape[0]))
        for p in tiny_adapter.processors() for kind, layer in (("k", p.to_k_ip), ("v", p.to_v_ip))
    ]
    unet_calls = []
    handles.append(tiny_pipe.unet.register_forward_pre_hook(lambda module, args: unet_calls.append(1)))
    request = dict(prompts=["a dog is hugging a cat", "a cat next to a dog"], subject_images=[photos(2), photos(2)[::-1]],
                   phrases=[["dog", "cat"], ["cat", "dog"]], boxes=[TWO, TWO[::-1]], seeds=[1, 2], width=32, height=32,
                   **{**SETTINGS, "num_inference_steps": 3})
    try:
        generate_with_layout(tiny_pipe, tiny_adapter, encoder, **request)
        assert len(unet_calls) == 3
        # 12 cross-attention layers: each projects once per call, only the 2 conditional samples of the
        # batch of 4 (the unconditional half has zero boxes); one mask set for the one 8 x 8 resolution.
        assert len(calls) == 24 and all(batches == [2] for batches in calls.values())
        assert masks == [(8, 8)]
        assert len(tiny_pipe.cross_attention_kwargs["ms_cache"]) == 0  # dropped after the call
        calls.clear(), masks.clear()
        generate_with_layout(tiny_pipe, tiny_adapter, encoder, precompute=False, **request)
        # The path before: every layer at every step, the whole batch of 4.
        assert all(batches == [4, 4, 4] for batches in calls.values()) and len(masks) == 3 * 12
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("subjects", [2, 3])
def test_precomputed_layout_gives_the_images_of_per_step_recomputation(tiny_pipe, tiny_adapter, subjects: int) -> None:
    encoder = SubjectEncoder.tiny(tiny_pipe)
    layout = TWO if subjects == 2 else THREE
    request = dict(prompts=["a dog and a cat", "a cat and a dog"], subject_images=[photos(subjects), photos(subjects)[::-1]],
                   phrases=[["dog", "cat", "bear"][:subjects]] * 2, boxes=[layout, layout[::-1]], seeds=[1, 2],
                   width=32, height=24, output_type="np", **SETTINGS)
    other = dict(request, subject_images=[photos(subjects)[::-1], photos(subjects)], boxes=[layout[::-1], layout])
    cached = [generate_with_layout(tiny_pipe, tiny_adapter, encoder, **r) for r in (request, other)]
    per_step = [generate_with_layout(tiny_pipe, tiny_adapter, encoder, precompute=False, **r) for r in (request, other)]
    for fast, slow in zip(cached, per_step):  # the second call reuses nothing of the first
        assert len(fast) == 2 and fast[0].shape == (24, 32, 3)
        np.testing.assert_allclose(np.stack(fast), np.stack(slow), rtol=0, atol=1e-5)
    assert np.abs(cached[0][0] - cached[1][0]).max() > 1e-2  # the two calls' subjects and boxes differ


def test_generate_refuses_mixed_subject_counts_and_bad_boxes(tiny_pipe, tiny_adapter) -> None:
    encoder = SubjectEncoder.tiny(tiny_pipe)
    base = dict(prompts=["a", "b"], subject_images=[photos(2), photos(3)], phrases=[["x", "y"], ["x", "y", "z"]],
                boxes=[TWO, THREE], seeds=[0, 1], width=32, height=32, **SETTINGS)
    with pytest.raises(RelbenchError, match="same number of subjects"):
        generate_with_layout(tiny_pipe, tiny_adapter, encoder, **base)
    bad = dict(base, subject_images=[photos(2)] * 2, phrases=[["x", "y"]] * 2, boxes=[TWO, [TWO[0], (0.6, 0.2, 0.5, 0.9)]])
    with pytest.raises(RelbenchError) as excinfo:
        generate_with_layout(tiny_pipe, tiny_adapter, encoder, **bad)
    assert "boxes[1][1]" in one_line_error(excinfo)
    with pytest.raises(RelbenchError, match="seeds has 1 entries for 2 prompts"):
        generate_with_layout(tiny_pipe, tiny_adapter, encoder, **dict(bad, boxes=[TWO, TWO], seeds=[0]))


def test_attention_store_keeps_one_map_per_layer_and_clears() -> None:
    # A recompute (gradient checkpointing) replaces a layer's map instead of piling up (defect #6).
    store = AttentionStore(max_queries=4)
    first, second = torch.rand(2, 4, 77), torch.rand(2, 4, 77)
    store.add("down.attn2", first)
    store.add("up.attn2", torch.rand(2, 4, 77))
    store.add("down.attn2", second)
    assert store.names == ["down.attn2", "up.attn2"] and store.maps[0] is second
    assert store.wants(4) and not store.wants(16)
    store.clear()
    assert store.maps == []
