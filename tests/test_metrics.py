"""CLIP-T, CLIP-I and DINO against closed forms and independent implementations.

The references are other libraries run on the same weights: an open_clip model converted into
transformers' ``CLIPModel`` (open_clip's own preprocessing, tokenizer and encoders give the
expected numbers) and a timm ViT converted into ``ViTModel`` for DINO. Photos come from
scikit-image; every model is tiny, random and seeded, so all of it runs offline in seconds.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network (see conftest)

import numpy as np
import pytest
import torch
from PIL import Image

from relbench.errors import RelbenchError
from relbench.metrics import METRICS
from relbench.metrics.base import ScoringSample
from relbench.metrics import clip as clip_module
from relbench.metrics.clip import CLIPIScore, CLIPTScore
from relbench.metrics.dino import DINOScore
from relbench.metrics.functional.preprocess import ImagePreprocess, preprocess_from_processor
from relbench.metrics.functional.similarity import (
    clip_t_score,
    cosine_matrix,
    cosine_scores,
    image_image_similarity,
)
from relbench.profiles import RunContext

CPU = dict(device="cpu")


@pytest.fixture(autouse=True)
def _own_embedding_cache(tmp_path, monkeypatch):
    """Each test starts with an empty on-disk reference-embedding cache (counts stay exact)."""
    monkeypatch.setenv("RELBENCH_EMBEDDING_CACHE", str(tmp_path / "embeddings"))


# ------------------------------------------------------------------------------------------
# Photos and samples


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    import skimage.data

    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in ("astronaut", "chelsea", "coffee")}


def sample(case_id: str, image: Image.Image, prompt: str, subjects: dict[str, tuple[Image.Image, ...]]) -> ScoringSample:
    return ScoringSample(
        case_id=case_id,
        image=image,
        prompt=prompt,
        relation_phrase="hugging",
        subject_ids=tuple(subjects),
        subject_nouns=tuple(subjects),
        references=tuple(subjects.values()),
    )


@pytest.fixture(scope="module")
def samples(photos) -> list[ScoringSample]:
    a, c, k = photos["astronaut"], photos["chelsea"], photos["coffee"]
    return [
        sample("c1", a, "An astronaut is hugging a cat.", {"astronaut": (a,), "cat": (c, k)}),
        sample("c2", k, "A cat is sitting next to a cup of coffee.", {"cat": (c,), "cup": (k, a)}),
        sample("c3", c, "A cat is hugging an astronaut.", {"cat": (c, k), "astronaut": (a,)}),
    ]


def cos100(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(100.0 * a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------
# Functional core vs closed forms


def test_cosine_scores_closed_forms():
    a = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 5.0], [0.5, 0.0], [1.0, 0.0], [math.cos(2 * math.pi / 3), math.sin(2 * math.pi / 3)]])
    scores = cosine_scores(a, b)
    # orthogonal -> 0, parallel (any length) -> 100, 45 degrees -> 100 / sqrt(2), 120 degrees -> -50 (not clamped at 0)
    assert scores.tolist() == pytest.approx([0.0, 100.0, 100 / math.sqrt(2), -50.0], abs=1e-5)
    assert clip_t_score(a, b).tolist() == pytest.approx(scores.tolist())
    assert float(cosine_scores(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, 2.0, 2.0]))) == pytest.approx(100.0)  # 1-D
    # Float rounding never takes a self-similarity above the declared range.
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(0))
    assert cosine_scores(x, x).max() <= 100.0 and cosine_matrix(x, x).max() <= 100.0
    assert torch.allclose(cosine_scores(x, x), torch.full((256,), 100.0), atol=1e-4)


def test_cosine_matrix_and_fp16_and_zero_vector():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0], [-1.0, 0.0, 0.0]])
    expected = [[100 / math.sqrt(2), 0.0, -100.0], [100 / math.sqrt(2), 0.0, 0.0]]
    assert cosine_matrix(a, b).tolist() == [pytest.approx(row, abs=1e-5) for row in expected]
    half = cosine_matrix(a.half(), b.half())
    assert half.dtype == torch.float32 and half.tolist() == [pytest.approx(row, abs=1e-2) for row in expected]
    assert float(cosine_scores(torch.zeros(3), torch.ones(3))) == 0.0  # zero vector: 0, not NaN
    with pytest.raises(ValueError):
        cosine_scores(torch.ones(2, 3), torch.ones(3, 3))


def test_image_image_similarity_is_mean_of_cosines_over_references():
    gen = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    refs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # Row 0: (100 + 0 - 100) / 3; row 1: (70.71 + 70.71 - 70.71) / 3. The cosine with the mean
    # reference (0, 1/3) would give 0 and 70.71 instead.
    assert image_image_similarity(gen, refs).tolist() == pytest.approx([0.0, 100 / math.sqrt(2) / 3], abs=1e-5)
    assert float(image_image_similarity(gen[1], refs[:2])) == pytest.approx(100 / math.sqrt(2), abs=1e-5)
    with pytest.raises(ValueError):
        image_image_similarity(gen, torch.empty(0, 2))


# ------------------------------------------------------------------------------------------
# Preprocessing vs torchvision (the transforms open_clip and DreamBench use)


@pytest.mark.parametrize(
    "prep",
    [
        ImagePreprocess(shortest_edge=32, crop=(32, 32), resample=3, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28)),
        ImagePreprocess(shortest_edge=37, crop=(30, 31), resample=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        ImagePreprocess(resize_to=(33, 40), resample=2, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ],
)
def test_preprocess_matches_torchvision(photos, prep):
    from torchvision import transforms as T

    steps: list = []
    interpolation = T.InterpolationMode.BICUBIC if prep.resample == 3 else T.InterpolationMode.BILINEAR
    steps.append(T.Resize(prep.shortest_edge if prep.shortest_edge else prep.resize_to, interpolation=interpolation))
    if prep.crop:
        steps.append(T.CenterCrop(prep.crop))
    steps += [T.ToTensor(), T.Normalize(prep.mean, prep.std)]
    reference = T.Compose(steps)
    images = [photos["chelsea"], photos["coffee"], photos["astronaut"]]  # landscape 451x300, 600x400, square
    ours = prep(images)
    expected = torch.stack([reference(image) for image in images])
    assert ours.shape == expected.shape == (3, 3, *(prep.crop or prep.resize_to))
    assert torch.allclose(ours, expected, atol=1e-5)


def test_preprocess_reads_processor_configs():
    from transformers import CLIPImageProcessor, ViTImageProcessor

    clip = preprocess_from_processor(CLIPImageProcessor(), "clip")  # the openai/clip-vit-* defaults
    assert (clip.shortest_edge, clip.crop, clip.resample) == (224, (224, 224), 3)
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    vit = preprocess_from_processor(ViTImageProcessor(size={"height": 224, "width": 224}), "dino")
    assert (vit.resize_to, vit.crop, vit.resample, vit.mean) == ((224, 224), None, 2, (0.5, 0.5, 0.5))
    assert vit.describe()["resample"] == "bilinear"
    with pytest.raises(RelbenchError, match="size"):
        preprocess_from_processor(CLIPImageProcessor(size={"longest_edge": 224}), "clip model 'x'")


# ------------------------------------------------------------------------------------------
# Independent references: open_clip -> CLIPModel, timm -> ViTModel


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Random values in every parameter (layer norms included), so a wrong key mapping shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


def _save_checkpoint(folder: Path, config, state_dict: dict[str, torch.Tensor], *processors) -> Path:
    """A folder as on the hub (config.json, model.safetensors, processor files), in the
    checkpoint key layout, so that the metric loads it through from_pretrained like a real model."""
    from safetensors.torch import save_file

    config.save_pretrained(folder)
    save_file({k: v.contiguous().clone() for k, v in state_dict.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    for processor in processors:
        processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def open_clip_pair(tmp_path_factory):
    """A tiny open_clip CLIP (GELU, 32 px) and a folder with the same weights for CLIPModel."""
    from open_clip.model import CLIP
    from transformers import CLIPConfig, CLIPImageProcessor

    from relbench.tiny import CLIP_VOCAB_SIZE, clip_tokenizer

    width, layers, heads, embed = 32, 2, 4, 24
    torch.manual_seed(0)
    oc = CLIP(
        embed_dim=embed,
        vision_cfg=dict(image_size=32, layers=layers, width=width, patch_size=8, head_width=width // heads, mlp_ratio=4),
        text_cfg=dict(context_length=77, vocab_size=CLIP_VOCAB_SIZE, width=width, heads=heads, layers=layers),
        quick_gelu=False,
    ).eval()
    _perturb(oc, seed=1)

    config = CLIPConfig(
        text_config=dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                         bos_token_id=CLIP_VOCAB_SIZE - 2, eos_token_id=CLIP_VOCAB_SIZE - 1, pad_token_id=CLIP_VOCAB_SIZE - 1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, hidden_act="gelu", layer_norm_eps=1e-5),
        projection_dim=embed,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    folder = _save_checkpoint(tmp_path_factory.mktemp("open-clip-converted"), config,
                              _open_clip_to_transformers(oc.state_dict(), layers), processor, clip_tokenizer())
    return oc, RunContext(profile="full", model_overrides={"clip": str(folder)}, **CPU)


def _open_clip_to_transformers(sd: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Key mapping between the two CLIP implementations (OpenAI layout -> transformers checkpoints)."""
    out = {
        "logit_scale": sd["logit_scale"],
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].T,  # open_clip computes x @ P, nn.Linear x @ W.T
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].T,
    }
    for src, dst in (("transformer", "text_model.encoder"), ("visual.transformer", "vision_model.encoder")):
        for i in range(layers):
            s, d = f"{src}.resblocks.{i}", f"{dst}.layers.{i}"
            for part in ("weight", "bias"):
                q, k, v = sd[f"{s}.attn.in_proj_{part}"].chunk(3)
                out[f"{d}.self_attn.q_proj.{part}"], out[f"{d}.self_attn.k_proj.{part}"], out[f"{d}.self_attn.v_proj.{part}"] = q, k, v
                out[f"{d}.self_attn.out_proj.{part}"] = sd[f"{s}.attn.out_proj.{part}"]
                out[f"{d}.layer_norm1.{part}"] = sd[f"{s}.ln_1.{part}"]
                out[f"{d}.layer_norm2.{part}"] = sd[f"{s}.ln_2.{part}"]
                out[f"{d}.mlp.fc1.{part}"] = sd[f"{s}.mlp.c_fc.{part}"]
                out[f"{d}.mlp.fc2.{part}"] = sd[f"{s}.mlp.c_proj.{part}"]
    return out


def _open_clip_embeddings(oc, images=(), texts=()):
    import open_clip

    preprocess = open_clip.image_transform(32, is_train=False)  # Resize(32, bicubic), CenterCrop, OpenAI mean/std
    with torch.no_grad():
        image_embeds = oc.encode_image(torch.stack([preprocess(i) for i in images])).numpy() if images else None
        text_embeds = oc.encode_text(open_clip.tokenize(list(texts))).numpy() if texts else None
    return image_embeds, text_embeds


def test_clip_t_matches_open_clip(open_clip_pair, samples):
    oc, context = open_clip_pair
    metric = CLIPTScore(context, batch_size=2)  # 3 images: 2 batches
    values = [r.value for r in metric.score(samples)]
    images, texts = _open_clip_embeddings(oc, [s.image for s in samples], [s.prompt for s in samples])
    expected = [cos100(i, t) for i, t in zip(images, texts)]
    assert values == pytest.approx(expected, abs=1e-3)
    assert len(set(np.round(expected, 3))) == 3  # the references tell the three samples apart


def test_clip_i_matches_open_clip(open_clip_pair, samples):
    oc, context = open_clip_pair
    results = CLIPIScore(context).score(samples)
    for s, result in zip(samples, results):
        (gen,), _ = _open_clip_embeddings(oc, [s.image])
        per_subject = {}
        for subject_id, refs in zip(s.subject_ids, s.references):
            ref_embeds, _ = _open_clip_embeddings(oc, refs)
            per_subject[subject_id] = float(np.mean([cos100(gen, r) for r in ref_embeds]))
        assert result.details == pytest.approx(per_subject, abs=1e-3)
        assert result.value == pytest.approx(np.mean(list(per_subject.values())), abs=1e-3)
    # In c1 the generated image is the astronaut's only reference: 100.
    assert results[0].details["astronaut"] == pytest.approx(100.0, abs=1e-4)
    assert results[0].details["cat"] < 99.0


@pytest.fixture(scope="module")
def timm_pair(tmp_path_factory):
    """A tiny timm ViT (DINO architecture, 32 px) and a folder with the same weights for ViTModel."""
    from timm.models.vision_transformer import VisionTransformer
    from transformers import ViTConfig, ViTImageProcessor

    width, layers, heads = 32, 2, 4
    torch.manual_seed(0)
    tv = VisionTransformer(img_size=32, patch_size=8, embed_dim=width, depth=layers, num_heads=heads, mlp_ratio=4, num_classes=0).eval()
    _perturb(tv, seed=2)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                       num_attention_heads=heads, layer_norm_eps=1e-6, hidden_act="gelu")  # timm's eps is 1e-6
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, resample=2, image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225))
    folder = _save_checkpoint(tmp_path_factory.mktemp("timm-converted"), config, _timm_vit_to_transformers(tv.state_dict(), layers), processor)
    return tv, RunContext(profile="full", model_overrides={"dino": str(folder)}, **CPU)


def _timm_vit_to_transformers(sd: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """timm ViT -> the key layout of ViT checkpoints on the hub (facebook/dino-vits16)."""
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    for i in range(layers):
        s, d = f"blocks.{i}", f"encoder.layer.{i}"
        for part in ("weight", "bias"):
            q, k, v = sd[f"{s}.attn.qkv.{part}"].chunk(3)
            out[f"{d}.attention.attention.query.{part}"], out[f"{d}.attention.attention.key.{part}"], out[f"{d}.attention.attention.value.{part}"] = q, k, v
            out[f"{d}.attention.output.dense.{part}"] = sd[f"{s}.attn.proj.{part}"]
            out[f"{d}.layernorm_before.{part}"] = sd[f"{s}.norm1.{part}"]
            out[f"{d}.layernorm_after.{part}"] = sd[f"{s}.norm2.{part}"]
            out[f"{d}.intermediate.dense.{part}"] = sd[f"{s}.mlp.fc1.{part}"]
            out[f"{d}.output.dense.{part}"] = sd[f"{s}.mlp.fc2.{part}"]
    return out


def _timm_features(tv, images, pooling: str) -> np.ndarray:
    from torchvision import transforms as T

    prep = T.Compose([T.Resize((32, 32), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor(),
                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    with torch.no_grad():
        tokens = tv.forward_features(torch.stack([prep(i) for i in images]))  # final norm applied
    return (tokens[:, 0] if pooling == "cls" else tokens.mean(dim=1)).numpy()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_dino_matches_timm(timm_pair, samples, pooling):
    tv, context = timm_pair
    results = DINOScore(context, pooling=pooling).score(samples)
    for s, result in zip(samples, results):
        gen = _timm_features(tv, [s.image], pooling)[0]
        expected = {sid: float(np.mean([cos100(gen, r) for r in _timm_features(tv, refs, pooling)]))
                    for sid, refs in zip(s.subject_ids, s.references)}
        assert result.details == pytest.approx(expected, abs=1e-3)
        assert result.value == pytest.approx(np.mean(list(expected.values())), abs=1e-3)
    assert results[0].details["astronaut"] == pytest.approx(100.0, abs=1e-4)


def test_dino_cls_and_mean_pooling_differ(timm_pair, samples):
    _, context = timm_pair
    cls = [r.details["cat"] for r in DINOScore(context, pooling="cls").score(samples)]
    mean = [r.details["cat"] for r in DINOScore(context, pooling="mean").score(samples)]
    assert max(abs(a - b) for a, b in zip(cls, mean)) > 0.5
    with pytest.raises(RelbenchError, match="pooling"):
        DINOScore(context, pooling="max")


# ------------------------------------------------------------------------------------------
# Tiny profile: identity, determinism, caching, settings


def test_identical_image_scores_100_in_tiny_profile(photos):
    context = RunContext(profile="tiny", **CPU)
    a = photos["astronaut"]
    one = [sample("c", a, "an astronaut", {"astronaut": (a.copy(),)})]
    for metric in (CLIPIScore(context), DINOScore(context), DINOScore(context, pooling="mean")):
        (result,) = metric.score(one)
        assert result.value == pytest.approx(100.0, abs=1e-4)
        assert -100.0 <= result.value <= 100.0


def test_tiny_profile_is_deterministic_per_seed(samples):
    def scores(seed: int) -> list[float]:
        context = RunContext(profile="tiny", seed=seed, **CPU)
        out = []
        for metric in (CLIPTScore(context), CLIPIScore(context), DINOScore(context)):
            out += [r.value for r in metric.score(samples)]
        return out

    first, again, other = scores(0), scores(0), scores(1)
    assert first == again  # bit-identical: same seed, separately built models
    assert max(abs(a - b) for a, b in zip(first, other)) > 1e-3


def test_dtype_is_applied_and_recorded(samples):
    fp32 = RunContext(profile="tiny", **CPU)
    bf16 = RunContext(profile="tiny", **CPU)
    reference = [r.value for r in CLIPTScore(fp32).score(samples)]
    metric = CLIPTScore(bf16, dtype="bfloat16")
    assert metric.embedder.model.dtype == torch.bfloat16 and metric.settings()["dtype"] == "bfloat16"
    values = [r.value for r in metric.score(samples)]
    assert 0.0 < max(abs(a - b) for a, b in zip(values, reference)) < 1.0  # rounded, but the same score
    with pytest.raises(RelbenchError, match="dtype"):
        DINOScore(bf16, dtype="float64")


class _ForwardCounter:
    """Counts images through a module's forward."""

    def __init__(self, module: torch.nn.Module):
        self.calls, self.images = 0, 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, kwargs_or_output, *rest) -> None:
        self.calls += 1

    def hook_images(self, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(lambda m, args, kwargs: setattr(self, "images", self.images + kwargs["pixel_values"].shape[0]), with_kwargs=True)


def test_references_embedded_once_and_results_unchanged(samples, monkeypatch):
    context = RunContext(profile="tiny", **CPU)
    cached = CLIPIScore(context, batch_size=4)
    counter = _ForwardCounter(cached.embedder.model.vision_model)
    counter.hook_images(cached.embedder.model.vision_model)

    first = cached.score(samples)
    # 3 generated images + 3 distinct reference pictures (a, c, k): the cache is keyed by pixels,
    # so "cat: k" and "cup: k" are one embedding.
    assert counter.images == 3 + 3
    assert counter.calls == 1 + 1  # batches of 4: one for the generated images, one for the references

    second = cached.score(samples)
    assert counter.images == 3 + 3  # nothing again: the generated images are in the embedder's memo
    # Shared embedder, shared memo: the same vector, whatever the batch size.
    assert CLIPIScore(context, batch_size=1).score(samples[:1])[0].value == first[0].value
    assert counter.images == 3 + 3

    monkeypatch.setenv("RELBENCH_EMBEDDING_CACHE", "off")
    fresh = CLIPIScore(RunContext(profile="tiny", **CPU), batch_size=1).score(samples)  # no cache, other batching
    for a, b, c in zip(first, second, fresh):
        assert a.value == b.value
        assert a.value == pytest.approx(c.value, abs=1e-4)
        assert a.details == pytest.approx(c.details, abs=1e-4)


def test_prompts_embedded_once(samples):
    metric = CLIPTScore(RunContext(profile="tiny", **CPU))
    calls = []
    metric.embedder.model.text_model.register_forward_hook(lambda m, args, out: calls.append(1))
    first = [r.value for r in metric.score(samples + samples)]
    # The same image at another row of a batch differs in the last float32 bits (matmul blocking).
    assert len(calls) == 1 and first[:3] == pytest.approx(first[3:], abs=1e-4)
    metric.score(samples)
    assert len(calls) == 1


def test_long_prompts_are_truncated_with_a_warning(photos, caplog):
    metric = CLIPTScore(RunContext(profile="tiny", **CPU))
    a = photos["astronaut"]
    short = "an astronaut " * 37  # 74 words + start/end tokens: 76, fits
    with caplog.at_level("WARNING", logger="relbench.metrics.clip"):
        fits, long_ = metric.score([sample("s", a, short, {"x": (a,)}), sample("l", a, short + "in space " * 10, {"x": (a,)})])
    warnings = [r.getMessage() for r in caplog.records if r.name == "relbench.metrics.clip"]
    assert len(warnings) == 1 and "prompt of 96 tokens truncated to 77" in warnings[0]
    # Truncated to 77 tokens, the long prompt is the short one plus one word: close, not identical.
    assert long_.value != fits.value and abs(long_.value - fits.value) < 5.0


def test_settings_record_what_moves_the_number():
    context = RunContext(profile="tiny", seed=7, **CPU)
    clip_t = CLIPTScore(context).settings()
    assert clip_t["model"] == "tiny:clip" and clip_t["seed"] == 7
    assert clip_t["input_resolution"] == 32 and clip_t["dtype"] == "float32" and clip_t["scale"] == 100.0
    assert clip_t["preprocessing"]["resize"] == {"shortest_edge": 32} and clip_t["preprocessing"]["center_crop"] == [32, 32]
    assert clip_t["preprocessing"]["resample"] == "bicubic" and clip_t["text_max_tokens"] == 77
    dino = DINOScore(context, pooling="mean").settings()
    assert (dino["model"], dino["pooling"], dino["seed"], dino["input_resolution"]) == ("tiny:dino", "mean", 7, 32)
    assert dino["preprocessing"]["resize"] == {"height": 32, "width": 32} and dino["preprocessing"]["center_crop"] is None
    assert "revision" in dino and "revision" in clip_t


def test_subject_without_references_is_a_user_error(photos):
    a = photos["astronaut"]
    with pytest.raises(RelbenchError, match="case c9: subject 'cat' has no reference images"):
        CLIPIScore(RunContext(profile="tiny", **CPU)).score([sample("c9", a, "p", {"astronaut": (a,), "cat": ()})])


def test_clip_metrics_of_one_context_share_one_model(samples):
    context = RunContext(profile="tiny", **CPU)
    clip_t, clip_i = CLIPTScore(context), CLIPIScore(context)
    assert clip_i.embedder is clip_t.embedder  # the runner builds both from one context: one load
    assert CLIPIScore(RunContext(profile="tiny", **CPU)).embedder is not clip_t.embedder
    assert CLIPIScore(context, dtype="bfloat16").embedder is not clip_t.embedder
    assert clip_i.score(samples)[0].details["astronaut"] == pytest.approx(100.0, abs=1e-4)
    assert CLIPIScore(context, embedder=clip_t.embedder).embedder is clip_t.embedder
    key = id(context)
    assert key in clip_module._SHARED_EMBEDDERS
    del context, clip_t, clip_i
    import gc

    gc.collect()
    assert key not in clip_module._SHARED_EMBEDDERS  # the cache does not outlive the run


def _count_images(module: torch.nn.Module) -> list[int]:
    """Images per forward of ``module`` (its pixel_values batch), one entry per call."""
    seen: list[int] = []
    module.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["pixel_values"].shape[0]), with_kwargs=True)
    return seen


def test_clip_t_clip_i_and_clip_r_of_one_run_embed_each_generated_image_once(samples):
    names = ("clip_t", "clip_i", "clip_r")
    context = RunContext(profile="tiny", **CPU)
    metrics = [METRICS.get(name)(context) for name in names]  # as the runner builds them
    embedder = metrics[0].embedder
    assert all(metric.embedder is embedder for metric in metrics)  # one model, one preprocessing
    seen = _count_images(embedder.model.vision_model)
    shared = [metric.score(samples) for metric in metrics]
    # The 3 generated images once for the three metrics (before: 3 x 3), and clip_i's 3 distinct
    # reference pictures.
    assert sum(seen) == 3 + 3
    for name, results in zip(names, shared):  # each metric alone in its own run: the same numbers
        alone = METRICS.get(name)(RunContext(profile="tiny", **CPU)).score(samples)
        assert [r.value for r in results] == [r.value for r in alone]
        assert [r.details for r in results] == [r.details for r in alone]


def test_dino_views_embed_each_image_once_per_pooling(samples):
    context = RunContext(profile="tiny", **CPU)
    cls_pooling, mean_pooling = DINOScore(context), DINOScore(context, pooling="mean")
    seen = _count_images(cls_pooling.embedder.model)
    first = [cls_pooling.score(samples), mean_pooling.score(samples)]
    again = [cls_pooling.score(samples), mean_pooling.score(samples)]
    assert sum(seen) == 2 * (3 + 3)  # per pooling: 3 generated images and 3 references, once
    assert [[r.value for r in results] for results in first] == [[r.value for r in results] for results in again]
    assert first[0][1].value != pytest.approx(first[1][1].value, abs=1e-3)  # the memo keys on the pooling


def test_tf32_precision_is_scoped_recorded_and_keyed(samples):
    context = RunContext(profile="tiny", **CPU)
    fp32, tf32 = CLIPTScore(context), CLIPTScore(context, dtype="tf32")
    assert tf32.embedder is not fp32.embedder and tf32.embedder.model.dtype == torch.float32
    assert tf32.settings()["dtype"] == "tf32" and fp32.settings()["dtype"] == "float32"
    assert tf32.embedder.references.store.hash != fp32.embedder.references.store.hash  # its own reference vectors
    before = torch.get_float32_matmul_precision()
    inside: list[str] = []
    tf32.embedder.model.vision_model.register_forward_pre_hook(lambda *args: inside.append(torch.get_float32_matmul_precision()))
    values = [r.value for r in tf32.score(samples)]
    assert inside == ["high"] and torch.get_float32_matmul_precision() == before  # TF32 inside the forward only
    # The CPU has no TF32: the same scores (on a GPU they differ by TF32 rounding).
    assert values == pytest.approx([r.value for r in fp32.score(samples)], abs=1e-3)


def test_embedder_precision_from_the_environment(samples, monkeypatch):
    from relbench.metrics.identity.metric import IdentitySettings

    monkeypatch.setenv("RELBENCH_EMBEDDER_DTYPE", "bfloat16")
    context = RunContext(profile="tiny", **CPU)
    clip_i = CLIPIScore(context)
    assert clip_i.embedder.model.dtype == torch.bfloat16 and clip_i.settings()["dtype"] == "bfloat16"
    assert DINOScore(context).settings()["dtype"] == "bfloat16" and IdentitySettings().dtype == "bfloat16"
    assert CLIPIScore(context, dtype="float32").settings()["dtype"] == "float32"  # an explicit dtype wins
    monkeypatch.setenv("RELBENCH_EMBEDDER_DTYPE", "fp8")
    with pytest.raises(RelbenchError, match=r"^\$RELBENCH_EMBEDDER_DTYPE: unknown precision 'fp8'; expected one of float32, tf32, bfloat16, float16$"):
        CLIPTScore(RunContext(profile="tiny", **CPU))


def test_dino_and_identity_metrics_of_one_context_load_dino_once(samples, monkeypatch):
    import relbench.tiny
    from relbench.metrics import dino as dino_module
    from relbench.metrics.identity.metric import ConfusionScore, IdentityDINOScore

    builds = []
    real = relbench.tiny.tiny_dino
    monkeypatch.setattr(relbench.tiny, "tiny_dino", lambda seed=0: builds.append(seed) or real(seed))
    context = RunContext(profile="tiny", **CPU)
    dino, dino_mean = DINOScore(context), DINOScore(context, pooling="mean")
    identity, confusion = IdentityDINOScore(context), ConfusionScore(context)
    assert builds == [0]  # four metrics, two poolings: one model
    assert dino_mean.embedder.model is dino.embedder.model is identity.analyzer.dino.model
    assert identity.analyzer.dino is dino.embedder  # same pooling: same view, same reference cache
    assert dino_mean.embedder.references is not dino.embedder.references  # another pooling: other vectors
    assert DINOScore(RunContext(profile="tiny", **CPU)).embedder.model is not dino.embedder.model
    assert DINOScore(context, dtype="bfloat16").embedder.model is not dino.embedder.model
    assert len(builds) == 3

    # References the dino metric embedded are not embedded again for identity_dino.
    seen = []
    dino.embedder.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["pixel_values"].shape[0]), with_kwargs=True)
    dino.score(samples)
    assert sum(seen) == 3 + 3 and dino.embedder.references.computed == 3
    identity.score(samples)
    assert dino.embedder.references.computed == 3  # no reference again; only crops went through the model
    assert confusion.score(samples)[0].details["space"] == "dino"

    key = id(context)
    assert key in dino_module._SHARED_EMBEDDERS
    del context, dino, dino_mean, identity, confusion
    import gc

    gc.collect()
    assert key not in dino_module._SHARED_EMBEDDERS  # the cache does not outlive the run


@pytest.mark.parametrize("name", ["clip_t", "clip_i", "clip_r", "dino", "identity_clip", "identity_dino", "presence", "confusion"])
def test_batched_and_one_at_a_time_scores_are_equal(samples, name, monkeypatch):
    monkeypatch.setenv("RELBENCH_EMBEDDING_CACHE", "off")  # both sides compute everything
    cls = METRICS.get(name)
    batched = cls(RunContext(profile="tiny", **CPU)).score(samples)
    single = cls(RunContext(profile="tiny", **CPU))
    for metric in (single, getattr(single, "analyzer", None)):
        for part in ("embedder", "clip", "dino", "detector"):
            if hasattr(metric, part):
                getattr(metric, part).batch_size = 1
    if hasattr(single, "batch_size"):
        single.batch_size = 1
    one_by_one = [single.score([s])[0] for s in samples]
    assert len(batched) == len(one_by_one) == 3
    for a, b in zip(batched, one_by_one):
        assert a.value == pytest.approx(b.value, abs=1e-4)
        assert _flatten(a.details) == pytest.approx(_flatten(b.details), abs=1e-4)
    assert len({round(r.value, 4) for r in batched}) > 1 or name == "presence"  # the samples are told apart


def _flatten(details, prefix=""):
    """Nested details -> {path: float}; non-numbers as strings (compared exactly)."""
    out = {}
    for key, value in details.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "."))
        elif isinstance(value, (list, tuple)):
            out.update(_flatten(dict(enumerate(value)), path + "."))
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            out[path] = str(value)
        else:
            out[path] = float(value)
    return out


# ------------------------------------------------------------------------------------------
# Loading: local folders, the HF cache, and errors


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, Path]:
    from relbench.tiny import clip_tokenizer, tiny_clip, tiny_dino

    root = tmp_path_factory.mktemp("models")
    clip_dir, dino_dir, bare_dir = root / "clip", root / "dino", root / "clip-no-tokenizer"
    model, processor = tiny_clip(seed=3)
    for folder in (clip_dir, bare_dir):
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    clip_tokenizer().save_pretrained(clip_dir)
    model, processor = tiny_dino(seed=3)
    model.save_pretrained(dino_dir)
    processor.save_pretrained(dino_dir)
    return {"clip": clip_dir, "dino": dino_dir, "bare": bare_dir}


def test_local_folders_load_and_score_like_the_tiny_models(saved_models, samples):
    full = RunContext(profile="full", model_overrides={"clip": str(saved_models["clip"]), "dino": str(saved_models["dino"])}, **CPU)
    tiny = RunContext(profile="tiny", seed=3, **CPU)
    for cls in (CLIPTScore, CLIPIScore, DINOScore):
        loaded = cls(full)
        assert [r.value for r in loaded.score(samples)] == pytest.approx([r.value for r in cls(tiny).score(samples)], abs=1e-5)
        settings = loaded.settings()
        assert settings["model"] == str(saved_models[cls.model_key]) and "seed" not in settings
        assert settings["revision"] is None  # a plain folder: no commit to record


def _fake_hub_cache(root: Path, repo: str, folder: Path, commit: str) -> None:
    """The HF cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    entry = root / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)


def test_hub_id_from_offline_cache_records_the_commit(saved_models, samples, tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_hub_cache(tmp_path, "relbench-test/tiny-clip", saved_models["clip"], commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    metric = CLIPTScore(RunContext(profile="full", model_overrides={"clip": "relbench-test/tiny-clip@main"}, **CPU))
    settings = metric.settings()
    assert (settings["model"], settings["requested_revision"], settings["revision"]) == ("relbench-test/tiny-clip", "main", commit)
    assert len(metric.score(samples)) == 3


def test_load_errors_are_one_line_relbench_errors(saved_models, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cases = [
        ({"clip": str(tmp_path / "missing")}, CLIPTScore, "no such folder"),
        ({"clip": "relbench-test/not-cached"}, CLIPTScore, "--model clip=/local/path"),
        ({"dino": "relbench-test/not-cached"}, DINOScore, "--model dino=/local/path"),
        ({"clip": str(saved_models["dino"])}, CLIPIScore, "weights missing for CLIPModel"),  # a ViT is not a CLIP
        ({"clip": str(saved_models["bare"])}, CLIPTScore, "tokenizer has 2 tokens"),
    ]
    for overrides, cls, message in cases:
        with pytest.raises(RelbenchError, match=message) as info:
            cls(RunContext(profile="full", model_overrides=overrides, **CPU))
        assert type(info.value) is RelbenchError and "\n" not in str(info.value)


def test_default_full_models_are_the_documented_ones():
    context = RunContext(profile="full")
    assert context.model("clip").id == "openai/clip-vit-large-patch14"
    assert context.model("dino").id == "facebook/dino-vits16"

