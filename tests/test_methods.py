"""Methods behind the Method interface: every registered one in the tiny profile, then each in detail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from relbench.benchmarks import load_benchmark
from relbench.data_root import resolve_data_root
from relbench.errors import RelbenchError, UnknownNameError
from relbench.method import GenerationRequest, SubjectInput
from relbench.methods import METHODS
from relbench.profiles import RunContext
from relbench.runner import SubjectInputs


def demo_request(case_index: int = 0, seed: int = 0, size: int = 64) -> GenerationRequest:
    bench = load_benchmark("demo")
    return SubjectInputs(bench, resolve_data_root()).request(bench.cases[case_index], seed, size, size)


def required_setting(method: str, key: str, tmp_path) -> str:
    """A value for a setting a method cannot run without (registry ``requires``)."""
    if (method, key) == ("dreamrelation", "loras"):
        from relbench.methods.dreamrelation.lora import add_relation_lora, save_relation_lora
        from relbench.tiny import tiny_sdxl_components

        unet = tiny_sdxl_components(0)["unet"]
        add_relation_lora(unet, seed=0)
        return str(save_relation_lora(unet, tmp_path / "lora"))
    if (method, key) == ("folder", "path"):
        rng = np.random.default_rng(0)
        for case_index, seed in ((0, 0), (1, 1)):
            path = tmp_path / "folder" / demo_request(case_index).case_id / f"{seed}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        return str(tmp_path / "folder")
    if (method, key) == ("reversion", "exemplars"):
        from relbench.data_root import load_image
        from relbench.methods.reversion.data import Exemplar, write_exemplar_folder

        image = load_image("skimage:astronaut", tmp_path).resize((64, 64))
        for relation in ("hug", "carry"):  # the demo cases the smoke test generates
            write_exemplar_folder([Exemplar(image, ("astronaut {} rocket",), "skimage:astronaut")], tmp_path / "exemplars" / relation)
        return str(tmp_path / "exemplars")
    raise AssertionError(f"the test does not know how to provide {method}.{key}: add it here")


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_generates_a_demo_image_in_the_tiny_profile(name: str, tmp_path) -> None:
    entry = METHODS.entry(name)
    if "tiny" not in entry.meta["profiles"]:
        pytest.skip(f"{name} is full-only: {entry.meta.get('full_only_reason')}")
    context = RunContext(profile="tiny")
    cls = METHODS.get(name)
    overrides = {key: required_setting(name, key, tmp_path) for key in entry.meta.get("requires", ())}
    method = cls(context, cls.settings_from_overrides(context, overrides))
    images = method.generate([demo_request(0, seed=0), demo_request(1, seed=1)])
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert all(im.mode == "RGB" for im in images)
    assert np.asarray(images[0]).std() > 1.0  # not a blank canvas
    settings = method.settings()
    assert settings["method"] == name and settings["profile"] == "tiny"


def collage(**overrides: str) -> tuple[object, GenerationRequest]:
    from relbench.methods.reference_collage.method import ReferenceCollage

    context = RunContext(profile="tiny")
    method = ReferenceCollage(context, ReferenceCollage.settings_from_overrides(context, overrides))
    return method, demo_request(0)


def test_reference_collage_pastes_each_reference_into_its_box() -> None:
    red = Image.new("RGB", (20, 10), (255, 0, 0))
    blue = Image.new("RGB", (10, 10), (0, 0, 255))
    request = GenerationRequest(
        "c", "p", "next to",
        (SubjectInput("a", "thing", (red,), (0.0, 0.0, 0.5, 1.0)), SubjectInput("b", "thing", (blue,), (0.5, 0.5, 1.0, 1.0))),
        seed=0, width=100, height=100,
    )
    method, _ = collage()
    pixels = np.asarray(method.generate([request])[0]).astype(int)
    # red is 2:1, contained in a 50x100 box -> 50x25, centred vertically: rows 37..62
    assert (pixels[50, 25] == [255, 0, 0]).all()
    assert (pixels[10, 25] == [127, 127, 127]).all()  # above the letterboxed red
    assert (pixels[75, 75] == [0, 0, 255]).all()  # blue fills its square box
    assert (pixels[25, 75] == [127, 127, 127]).all()
    stretched, _ = collage(fit="stretch")
    assert (np.asarray(stretched.generate([request])[0])[5, 25] == [255, 0, 0]).all()


def test_reference_collage_uses_masks_and_picks_the_reference_by_seed() -> None:
    first, second = Image.new("RGB", (8, 8), (0, 255, 0)), Image.new("RGB", (8, 8), (255, 255, 0))
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 4, 8))  # only the left half is foreground
    subject = SubjectInput("a", "thing", (first, second), (0.0, 0.0, 1.0, 1.0), (mask, mask))
    method, _ = collage()
    for seed, colour in ((0, [0, 255, 0]), (1, [255, 255, 0]), (2, [0, 255, 0])):
        image = np.asarray(method.generate([GenerationRequest("c", "p", "r", (subject,), seed, 16, 16)])[0])
        assert (image[8, 2] == colour).all(), seed
        assert (image[8, 12] == [127, 127, 127]).all()  # masked out


def test_settings_overrides_are_typed_and_unknown_keys_refused() -> None:
    from relbench.methods.sdxl.method import SDXL

    context = RunContext(profile="tiny")
    settings = SDXL.settings_from_overrides(context, {"num_inference_steps": "3", "guidance_scale": "7.5"})
    assert settings.num_inference_steps == 3 and settings.guidance_scale == 7.5
    assert settings.dtype == "float32"  # the tiny profile's default is kept
    with pytest.raises(RelbenchError, match=r"--set sdxl.steps: unknown setting. Expected one of .*num_inference_steps"):
        SDXL.settings_from_overrides(context, {"steps": "3"})
    with pytest.raises(RelbenchError, match="cannot read 'many' as int"):
        SDXL.settings_from_overrides(context, {"num_inference_steps": "many"})


@pytest.fixture(scope="module")
def tiny_sdxl() -> object:
    from relbench.methods.sdxl.method import SDXL

    return SDXL(RunContext(profile="tiny"))


def test_tiny_sdxl_is_deterministic_per_seed_and_independent_of_batching(tiny_sdxl: object) -> None:
    a, b = demo_request(0, seed=3), demo_request(1, seed=4)
    batched = tiny_sdxl.generate([a, b])
    alone = tiny_sdxl.generate([a])[0]
    again = tiny_sdxl.generate([b, a])
    diff = np.abs(np.asarray(batched[0], dtype=int) - np.asarray(alone, dtype=int))
    assert diff.max() <= 2  # same seed, same image, whatever its batch mates (float noise only)
    assert np.array_equal(np.asarray(again[1]), np.asarray(batched[0]))
    other_seed = tiny_sdxl.generate([dataclasses.replace(a, seed=5)])[0]
    assert np.abs(np.asarray(other_seed, dtype=int) - np.asarray(alone, dtype=int)).mean() > 5


def test_tiny_sdxl_settings_record_model_and_sampler(tiny_sdxl: object) -> None:
    settings = tiny_sdxl.settings()
    assert settings["model"]["id"] == "tiny:sdxl"
    assert settings["num_inference_steps"] == 2 and settings["guidance_scale"] == 5.0
    assert settings["scheduler"] == "EulerDiscreteScheduler"
    assert settings["negative_prompt"].startswith("monochrome")


def test_full_sdxl_with_a_missing_local_path_is_a_clear_error(tmp_path) -> None:
    from relbench.methods.sdxl.method import SDXL

    context = RunContext(profile="full", device="cpu", model_overrides={"sdxl": str(tmp_path / "nothing")})
    with pytest.raises(RelbenchError, match=r"cannot load SDXL from .*--model sdxl=/local/path"):
        SDXL(context)


def test_full_sdxl_loads_a_local_pipeline_folder(tmp_path) -> None:
    """The full profile's loading code, run on a pipeline saved from the tiny components."""
    from diffusers import StableDiffusionXLPipeline

    from relbench.methods.sdxl.method import SDXL
    from relbench.tiny import tiny_sdxl_components

    StableDiffusionXLPipeline(**tiny_sdxl_components(0), add_watermarker=False).save_pretrained(tmp_path / "sdxl")
    context = RunContext(profile="full", device="cpu", model_overrides={"sdxl": str(tmp_path / "sdxl")})
    method = SDXL(context, SDXL.settings_from_overrides(context, {"num_inference_steps": "2"}))
    assert method.settings()["model"]["id"] == str(tmp_path / "sdxl")
    image = method.generate([demo_request(0, seed=0)])[0]
    tiny = SDXL(RunContext(profile="tiny")).generate([demo_request(0, seed=0)])[0]
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(tiny, dtype=int)).max() <= 2  # same weights, same image


def test_unknown_method_names_get_suggestions() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'sdxl'"):
        METHODS.get("sdx")
