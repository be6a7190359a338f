"""Inference-only baselines: ip-adapter (masked multi-subject IP-Adapter), omnigen, folder."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relbench.benchmarks import load_benchmark
from relbench.data_root import resolve_data_root
from relbench.errors import RelbenchError
from relbench.method import GenerationRequest, SubjectInput
from relbench.profiles import RunContext
from relbench.runner import SubjectInputs

TINY = RunContext(profile="tiny")


def demo_request(case_index: int = 0, seed: int = 0, size: int = 64) -> GenerationRequest:
    bench = load_benchmark("demo")
    return SubjectInputs(bench, resolve_data_root()).request(bench.cases[case_index], seed, size, size)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def side_by_side(first: Image.Image, second: Image.Image, size: int = 64) -> GenerationRequest:
    """Subject a fills the left 3/8 of the image, subject b the right 3/8; the middle is free."""
    return GenerationRequest(
        "side-by-side", "a cat next to a cup of coffee", "next to",
        (SubjectInput("a", "cat", (first,), (0.0, 0.0, 0.375, 1.0)),
         SubjectInput("b", "cup of coffee", (second,), (0.625, 0.0, 1.0, 1.0))),
        seed=0, width=size, height=size,
    )


# --------------------------------------------------------------------------------------------
# ip-adapter


@pytest.fixture(scope="module")
def ip_adapter() -> object:
    from relbench.methods.ip_adapter.method import IPAdapter

    return IPAdapter(TINY)


def test_ip_adapter_loads_a_plus_adapter_with_the_configured_scale_and_records_it(ip_adapter) -> None:
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    processors = [p for p in ip_adapter.pipe.unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
    assert len(processors) == 12  # every cross-attention layer of the tiny SDXL UNet
    assert all(p.scale == [0.7] and p.num_tokens == [16] for p in processors)
    settings = ip_adapter.settings()
    assert settings["method"] == "ip-adapter" and settings["scale"] == 0.7 and settings["num_inference_steps"] == 2
    assert settings["weight_name"] == "ip-adapter-plus_sdxl_vit-h.safetensors" and settings["subfolder"] == "sdxl_models"
    assert settings["image_projection"] == "IPAdapterPlusImageProjection"
    assert settings["models"]["ip_adapter"]["id"] == "tiny:ip_adapter"


def test_ip_adapter_is_deterministic_per_seed_and_independent_of_batching(ip_adapter) -> None:
    a, b, a2 = demo_request(0, seed=0), demo_request(1, seed=1), demo_request(0, seed=2)
    batched = ip_adapter.generate([a, b, a2])
    assert [im.size for im in batched] == [(64, 64)] * 3 and all(im.mode == "RGB" for im in batched)
    assert np.asarray(batched[0]).std() > 1.0
    assert max_diff(ip_adapter.generate([b])[0], batched[1]) <= 2  # other cases in the call change nothing
    assert max_diff(ip_adapter.generate([a2])[0], batched[2]) <= 2  # nor other seeds of the same case
    assert np.abs(np.asarray(batched[0], dtype=int) - np.asarray(batched[2], dtype=int)).mean() > 5


def count_unet_forwards(pipe) -> list[int]:
    """A list whose length grows by one per UNet forward of ``pipe`` (the handle stays: module-scoped fixtures)."""
    calls: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def test_ip_adapter_serves_several_cases_in_one_pipeline_call_with_the_images_of_one_call_each(ip_adapter) -> None:
    requests = [demo_request(0, seed=0), demo_request(1, seed=0), demo_request(2, seed=1), demo_request(3, seed=2)]
    # Another size in the same call goes to a call of its own (the masks' shape differs).
    other_size = demo_request(1, seed=3, size=48)
    calls = count_unet_forwards(ip_adapter.pipe)
    batched = ip_adapter.generate([*requests, other_size])
    assert len(calls) == 2 * 2  # two calls (64 px: four cases; 48 px) x two steps, guidance in the same forward
    del calls[:]
    alone = [ip_adapter.generate([r])[0] for r in [*requests, other_size]]
    assert len(calls) == 5 * 2  # what the old grouping by (case, references) cost for these five requests
    assert [im.size for im in batched] == [(64, 64)] * 4 + [(48, 48)]
    for one, many in zip(alone, batched):
        assert max_diff(one, many) <= 1  # float32 on CPU: batched kernels round differently, nothing more
    # Each image keeps its own case: different references and boxes give different images.
    assert min(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).mean() for a, b in zip(batched[:3], batched[1:4])) > 1


def test_subject_masks_are_one_inside_each_box_and_zero_outside() -> None:
    from relbench.methods.ip_adapter.method import subject_masks

    masks = subject_masks([(0.0, 0.0, 0.5, 1.0), (0.25, 0.5, 1.0, 1.0)], 64, 32)
    assert masks.shape == (2, 32, 64)
    expected = torch.zeros(2, 32, 64)
    expected[0, :, :32] = 1
    expected[1, 16:, 16:] = 1
    assert torch.equal(masks, expected)


def first_cross_attention_outputs(method, request: GenerationRequest) -> torch.Tensor:
    """Output of the UNet's first cross-attention layer at the first denoising step, (batch, h, w, c)."""
    unet = method.pipe.unet
    name = next(n for n, _ in unet.named_modules() if n.endswith("attn2"))
    outputs: list[torch.Tensor] = []
    hook = unet.get_submodule(name).register_forward_hook(lambda module, args, out: outputs.append(out.detach().clone()))
    try:
        method.generate([request])
    finally:
        hook.remove()
    first = outputs[0]
    side = int(first.shape[1] ** 0.5)
    return first.reshape(first.shape[0], side, side, -1)


def test_ip_adapter_masks_confine_each_subject_to_its_box_at_the_attention(ip_adapter) -> None:
    cat, coffee, astronaut = photo("chelsea"), photo("coffee"), photo("astronaut")
    base = first_cross_attention_outputs(ip_adapter, side_by_side(cat, coffee))
    # At this layer nothing upstream depends on the references: any change is the adapter's output.
    a_changed = (first_cross_attention_outputs(ip_adapter, side_by_side(astronaut, coffee)) - base).abs().amax(dim=(0, 3))
    b_changed = (first_cross_attention_outputs(ip_adapter, side_by_side(cat, astronaut)) - base).abs().amax(dim=(0, 3))
    columns = a_changed.shape[1]  # 16 at 64 px: subject a owns columns 0-5, b columns 10-15
    a_cols, b_cols = round(0.375 * columns), round(0.625 * columns)
    assert a_changed[:, :a_cols].min() > 0.05
    assert a_changed[:, a_cols:].max() == 0  # outside a's box nothing changed
    assert b_changed[:, b_cols:].min() > 0.05
    assert b_changed[:, :b_cols].max() == 0


def test_changing_one_subject_moves_pixels_in_its_box_more_than_far_from_it(ip_adapter) -> None:
    cat, coffee, astronaut = photo("chelsea"), photo("coffee"), photo("astronaut")
    before = np.asarray(ip_adapter.generate([side_by_side(cat, coffee)])[0], dtype=float)
    after = np.asarray(ip_adapter.generate([side_by_side(astronaut, coffee)])[0], dtype=float)
    change = np.abs(after - before).mean(axis=2)
    inside, far = change[:, :24].mean(), change[:, 48:].mean()
    # Self-attention and convolutions spread some of it (random weights); the box gets most.
    assert inside > 2.0 and far < 0.7 * inside


def test_ip_adapter_scale_zero_ignores_the_references() -> None:
    from relbench.methods.ip_adapter.method import IPAdapter

    import logging

    # Loading says nothing about "modules to keep in float32: []" (a diffusers 0.42 line with no content).
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.addHandler(handler)
    try:
        method = IPAdapter(TINY, IPAdapter.settings_from_overrides(TINY, {"scale": "0"}))
    finally:
        logger.removeHandler(handler)
    assert not [line for line in said if "kept in float32" in line]
    first = method.generate([side_by_side(photo("chelsea"), photo("coffee"))])[0]
    second = method.generate([side_by_side(photo("astronaut"), photo("rocket"))])[0]
    assert max_diff(first, second) == 0


def test_ip_adapter_refuses_empty_boxes_and_requests_without_subjects(ip_adapter) -> None:
    request = side_by_side(photo("chelsea"), photo("coffee"))
    flat = dataclasses.replace(request.subjects[0], box=(0.2, 0.5, 0.6, 0.5))
    with pytest.raises(RelbenchError, match=r"case side-by-side: subject 'a' has an empty layout box"):
        ip_adapter.generate([dataclasses.replace(request, subjects=(flat, request.subjects[1]))])
    with pytest.raises(RelbenchError, match=r"supports 1 to any number subjects, got 0"):
        ip_adapter.generate([dataclasses.replace(request, subjects=())])


def save_tiny_ip_adapter_repo(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A local SDXL folder and an h94/IP-Adapter-shaped folder holding the tiny weights."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from relbench.methods.ip_adapter.method import tiny_image_encoder, tiny_ip_adapter_state_dict
    from relbench.tiny import tiny_sdxl_components

    components = tiny_sdxl_components(seed)
    StableDiffusionXLPipeline(**components, add_watermarker=False).save_pretrained(root / "sdxl")
    encoder, _ = tiny_image_encoder(seed)
    encoder.save_pretrained(root / "ip" / "models" / "image_encoder")
    state = tiny_ip_adapter_state_dict(components["unet"], encoder.config.hidden_size, seed)
    flat = {f"{part}.{key}": value.contiguous() for part, values in state.items() for key, value in values.items()}
    (root / "ip" / "sdxl_models").mkdir(parents=True)
    save_file(flat, root / "ip" / "sdxl_models" / "ip-adapter-plus_sdxl_vit-h.safetensors")
    return root / "sdxl", root / "ip"


def test_full_ip_adapter_loads_local_folders_in_the_hub_layout(tmp_path, ip_adapter) -> None:
    from relbench.methods.ip_adapter.method import IPAdapter

    sdxl, ip = save_tiny_ip_adapter_repo(tmp_path)
    context = RunContext(profile="full", device="cpu", model_overrides={"sdxl": str(sdxl), "ip_adapter": str(ip)})
    method = IPAdapter(context, IPAdapter.settings_from_overrides(context, {"num_inference_steps": "2"}))
    assert method.settings()["models"]["ip_adapter"]["id"] == str(ip)
    request = demo_request(0, seed=0)
    assert max_diff(method.generate([request])[0], ip_adapter.generate([request])[0]) <= 2  # same weights, same image

    missing = RunContext(profile="full", device="cpu", model_overrides={"sdxl": str(sdxl), "ip_adapter": str(tmp_path / "none")})
    with pytest.raises(RelbenchError, match=r"cannot load the IP-Adapter image encoder .*--model ip_adapter=/local/path"):
        IPAdapter(missing)
    wrong_file = IPAdapter.settings_from_overrides(context, {"weight_name": "ip-adapter_sdxl.safetensors"})
    with pytest.raises(RelbenchError, match=r"cannot load IP-Adapter sdxl_models/ip-adapter_sdxl.safetensors from"):
        IPAdapter(context, wrong_file)


# --------------------------------------------------------------------------------------------
# omnigen


def test_omnigen_prompt_points_each_subject_at_its_image_inline() -> None:
    from relbench.methods.omnigen.method import build_prompt

    assert build_prompt("a dog hugging a stuffed animal", ["dog", "stuffed animal"]) == (
        "the dog in <img><|image_1|></img> hugging the stuffed animal in <img><|image_2|></img>"
    )
    assert build_prompt("An astronaut carrying a cup of coffee", ["astronaut", "cup of coffee"]) == (
        "The astronaut in <img><|image_1|></img> carrying the cup of coffee in <img><|image_2|></img>"
    )
    # Same noun twice: the mentions are taken in order; no article is left alone.
    assert build_prompt("a dog chasing another dog on grass", ["dog", "dog"]) == (
        "the dog in <img><|image_1|></img> chasing another dog in <img><|image_2|></img> on grass"
    )
    # Whole words only: "cat" is not found inside "category".
    assert build_prompt("a category next to a cat", ["cat", "dog"]).endswith(
        "The cat is the one in <img><|image_1|></img>. The dog is the one in <img><|image_2|></img>."
    )


def test_omnigen_prompt_falls_back_to_appended_sentences_and_refuses_unknown_styles() -> None:
    from relbench.methods.omnigen.method import build_prompt

    # The nouns are in the prompt but not in subject order.
    assert build_prompt("a cat next to a rocket.", ["rocket", "cat"]) == (
        "a cat next to a rocket. The rocket is the one in <img><|image_1|></img>. The cat is the one in <img><|image_2|></img>."
    )
    assert build_prompt("a cat next to a rocket", ["cat", "rocket"], "appended-v1") == (
        "a cat next to a rocket. The cat is the one in <img><|image_1|></img>. The rocket is the one in <img><|image_2|></img>."
    )
    with pytest.raises(RelbenchError, match=r"--set omnigen.prompt_style: expected one of inline-v1, appended-v1, got 'v2'"):
        build_prompt("a cat", ["cat"], "v2")


def test_omnigen_refuses_unknown_prompt_styles_before_loading_models() -> None:
    from relbench.methods.omnigen.method import OmniGen

    settings = OmniGen.settings_from_overrides(TINY, {"prompt_style": "free"})
    with pytest.raises(RelbenchError, match="prompt_style"):
        OmniGen.check_cases(settings, load_benchmark("demo"), load_benchmark("demo").cases)


def test_tiny_omnigen_tokenizer_follows_the_llama_id_layout_the_processor_expects() -> None:
    from diffusers.pipelines.omnigen.processor_omnigen import OmniGenMultiModalProcessor

    from relbench.methods.omnigen.method import tiny_omnigen_tokenizer
    from relbench.tiny import clip_tokenizer

    tokenizer = tiny_omnigen_tokenizer()
    assert (tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>"])) == [0, 1, 2]
    clip_ids = clip_tokenizer()("a cat hugging a dog").input_ids[1:-1]  # without CLIP's start/end tokens
    assert tokenizer("a cat hugging a dog").input_ids == [1] + [i + 3 for i in clip_ids]
    user = tokenizer("<|user|>").input_ids
    assert len(user) == 2 and tokenizer.convert_ids_to_tokens(user[1]) == "<|user|>"

    processor = OmniGenMultiModalProcessor(tokenizer, max_image_size=32)
    images = [processor.process_image(Image.new("RGB", (32, 32))) for _ in range(2)]
    out = processor.process_multi_modal_prompt("a <img><|image_1|></img> and a <img><|image_2|></img>", images)
    (s1, e1), (s2, e2) = out["image_sizes"]
    assert e1 - s1 == e2 - s2 == 4  # (32 / 16) ** 2 placeholder tokens per image
    assert out["input_ids"][0] == 1 and 1 not in out["input_ids"][e1:s2]  # <s> only at the very start


@pytest.fixture(scope="module")
def omnigen() -> object:
    from relbench.methods.omnigen.method import OmniGen

    return OmniGen(TINY)


def test_tiny_omnigen_generates_deterministically_per_seed_from_the_subject_images(omnigen) -> None:
    a = demo_request(0, seed=0)
    first = omnigen.generate([a])[0]
    assert first.size == (64, 64) and first.mode == "RGB" and np.asarray(first).std() > 1.0
    state = torch.get_rng_state()
    torch.manual_seed(1234)  # the global generator's state does not matter ...
    assert max_diff(omnigen.generate([a])[0], first) == 0
    torch.set_rng_state(state)
    before = torch.get_rng_state()
    other_seed = omnigen.generate([dataclasses.replace(a, seed=1)])[0]
    assert torch.equal(torch.get_rng_state(), before)  # ... and is left as it was
    assert np.abs(np.asarray(other_seed, dtype=int) - np.asarray(first, dtype=int)).mean() > 2
    # The references reach the model: another image for subject 1 changes the output.
    swapped = dataclasses.replace(a, subjects=(dataclasses.replace(a.subjects[0], images=(photo("rocket"),)), a.subjects[1]))
    assert np.abs(np.asarray(omnigen.generate([swapped])[0], dtype=int) - np.asarray(first, dtype=int)).mean() > 0.5


def test_tiny_omnigen_settings_record_the_sampling_recipe(omnigen) -> None:
    settings = omnigen.settings()
    assert settings["method"] == "omnigen" and settings["prompt_style"] == "inline-v1"
    assert (settings["guidance_scale"], settings["img_guidance_scale"]) == (2.5, 1.6)
    assert settings["num_inference_steps"] == 2 and settings["max_input_image_size"] == 64
    assert settings["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    from relbench.methods.omnigen.method import OmniGen

    full = OmniGen.default_settings(RunContext(profile="full", device="cpu"))
    assert (full.num_inference_steps, full.max_input_image_size, full.dtype) == (50, 1024, "float32")


def test_full_omnigen_loads_a_local_pipeline_folder(tmp_path, omnigen) -> None:
    from diffusers import OmniGenPipeline

    from relbench.methods.omnigen.method import OmniGen, tiny_omnigen_components

    OmniGenPipeline(**tiny_omnigen_components(0)).save_pretrained(tmp_path / "omnigen")
    context = RunContext(profile="full", device="cpu", model_overrides={"omnigen": str(tmp_path / "omnigen")})
    method = OmniGen(context, OmniGen.settings_from_overrides(context, {"num_inference_steps": "2", "max_input_image_size": "64"}))
    assert method.settings()["model"]["id"] == str(tmp_path / "omnigen")
    request = demo_request(1, seed=3)
    assert max_diff(method.generate([request])[0], omnigen.generate([request])[0]) <= 2  # same weights, same image

    missing = RunContext(profile="full", device="cpu", model_overrides={"omnigen": str(tmp_path / "none")})
    with pytest.raises(RelbenchError, match=r"cannot load OmniGen from .*--model omnigen=/local/path"):
        OmniGen(missing)


# --------------------------------------------------------------------------------------------
# folder


def folder_method(path: Path | str, **overrides: str) -> object:
    from relbench.methods.folder.method import Folder

    return Folder(TINY, Folder.settings_from_overrides(TINY, {"path": str(path), **overrides}))


def write_image(path: Path, value: int, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (value, 255 - value, 7) if mode == "RGB" else (value, 255 - value, 7, 128)
    Image.new(mode, size, colour).save(path)


def test_folder_reads_the_case_seed_layout_and_records_its_name(tmp_path) -> None:
    root = tmp_path / "gpt-image"
    a, b = demo_request(0, seed=0), demo_request(1, seed=1)
    write_image(root / a.case_id / "0.png", 10)
    write_image(root / b.case_id / "1.jpg", 200)
    write_image(root / b.case_id / "2.png", 30, mode="RGBA")
    method = folder_method(root)
    images = method.generate([a, b, dataclasses.replace(b, seed=2)])
    assert [im.mode for im in images] == ["RGB"] * 3
    assert tuple(np.asarray(images[0])[5, 5]) == (10, 245, 7)
    assert np.abs(np.asarray(images[1], dtype=int)[5, 5] - [200, 55, 7]).max() <= 3  # JPEG
    assert tuple(np.asarray(images[2])[5, 5]) == (30, 225, 7)  # alpha dropped
    settings = method.settings()
    assert settings["method"] == "folder" and settings["display_name"] == "gpt-image"
    assert settings["path"] == str(root) and settings["resolved_path"] == str(root.resolve())
    assert folder_method(root, name="GPT Image 1").settings()["display_name"] == "GPT Image 1"


def test_folder_reports_missing_images_with_the_first_files_and_the_count(tmp_path) -> None:
    from relbench.methods.folder.method import Folder

    bench = load_benchmark("demo")
    first = bench.cases[0].id
    write_image(tmp_path / first / "0.png", 1)
    settings = Folder.settings_from_overrides(TINY, {"path": str(tmp_path)})
    root = re.escape(str(tmp_path))
    with pytest.raises(RelbenchError, match=rf"folder: 7 of 8 images missing \({root}/{first}/1.png, {root}/\S+/0.png, .*, \.\.\.\); expected {root}/<case_id>/<seed>.png"):
        Folder.check_cases(settings, bench, bench.cases, seeds=(0, 1))
    Folder.check_cases(settings, bench, bench.cases[:1], seeds=(0,))
    with pytest.raises(RelbenchError, match=r"folder: 3 of 4 cases have no image"):
        Folder.check_cases(settings, bench, bench.cases)  # without seeds: a case with no image at all
    method = folder_method(tmp_path)
    with pytest.raises(RelbenchError, match=rf"folder: 1 of 2 images missing \({root}/{first}/5.png\)"):
        method.generate([demo_request(0, seed=0), demo_request(0, seed=5)])


def test_folder_refuses_wrong_sizes_instead_of_resizing(tmp_path) -> None:
    request = demo_request(0, seed=0)
    write_image(tmp_path / request.case_id / "0.png", 1, size=(128, 128))
    write_image(tmp_path / request.case_id / "1.png", 1, size=(64, 48))
    method = folder_method(tmp_path)
    with pytest.raises(RelbenchError, match=r"0.png: image is 128x128, the run's resolution is 64x64; folder never resizes: pass --resolution 128"):
        method.generate([request])
    with pytest.raises(RelbenchError, match=r"1.png: image is 64x48, .*provide square images"):
        method.generate([dataclasses.replace(request, seed=1)])


def test_folder_refuses_two_files_for_one_seed_and_unusable_paths(tmp_path) -> None:
    request = demo_request(0, seed=0)
    write_image(tmp_path / request.case_id / "0.png", 1)
    write_image(tmp_path / request.case_id / "0.webp", 1)
    with pytest.raises(RelbenchError, match=r"2 images for seed 0 \(0.png, 0.webp\); keep one"):
        folder_method(tmp_path).generate([request])
    with pytest.raises(RelbenchError, match=r"folder needs --set folder.path="):
        folder_method("")
    with pytest.raises(RelbenchError, match=r"--set folder.path=.*nowhere: folder not found"):
        folder_method(tmp_path / "nowhere")


def test_folder_reads_a_csv_mapping(tmp_path) -> None:
    a, b = demo_request(0, seed=0), demo_request(1, seed=3)
    write_image(tmp_path / "images" / "x.png", 50)
    write_image(tmp_path / "elsewhere" / "y.png", 90)
    mapping = tmp_path / "api-run.csv"
    mapping.write_text(f"case_id,seed,file\n{a.case_id},0,images/x.png\n{b.case_id},3,{tmp_path / 'elsewhere' / 'y.png'}\n"
                       f"{b.case_id},4,images/gone.png\n")
    method = folder_method(mapping)
    first, second = method.generate([a, b])
    assert tuple(np.asarray(first)[0, 0]) == (50, 205, 7) and tuple(np.asarray(second)[0, 0]) == (90, 165, 7)
    assert method.settings()["display_name"] == "api-run"
    root = re.escape(str(tmp_path))
    with pytest.raises(RelbenchError, match=rf"folder: 2 of 3 images missing \({root}/images/gone.png, {a.case_id} seed 1 \(no row\)\)"):
        method.generate([a, dataclasses.replace(b, seed=4), dataclasses.replace(a, seed=1)])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("case,seed,file\nc,0,x.png\n", r"expected the columns case_id,seed,file; found case,seed,file"),
        ("case_id,seed,file\nc,zero,x.png\n", r"line 2: seed 'zero' is not an integer"),
        ("case_id,seed,file\nc,0,x.png\nd,1,y.png\nc,0,z.png\n", r"line 4: c seed 0 is listed twice \(first on line 2\)"),
        ("case_id,seed,file\nc,0,\n", r"line 2: case_id and file must not be empty"),
        ("case_id,seed,file\n", r"no rows"),
    ],
)
def test_folder_csv_mistakes_name_the_file_and_line(tmp_path, text: str, message: str) -> None:
    mapping = tmp_path / "map.csv"
    mapping.write_text(text)
    with pytest.raises(RelbenchError, match=rf"map.csv: {message}"):
        folder_method(mapping)
