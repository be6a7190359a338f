"""The fine-tuning baselines in the tiny profile: ``dreambooth-lora`` and ``custom-diffusion``.

Each trains two steps and writes weights in diffusers' formats that load back with equal values,
resumes exactly, trains once per subject set (the trained cache; a training setting retrains, a
sampling setting does not), puts the right token before each class noun, and refuses what it
cannot handle with one clear error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from relbench.errors import RelbenchError
from relbench.method import GenerationRequest, SubjectInput
from relbench.methods import finetune_common as common
from relbench.methods.custom_diffusion import train as cd_train
from relbench.methods.dreambooth_lora import train as db_train
from relbench.profiles import RunContext

TINY = RunContext(profile="tiny")


# --------------------------------------------------------------------------------------------
# Small inputs


def photo(name: str, size: tuple[int, int] = (80, 64)) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size)


SUBJECTS = {
    "bear": SubjectInput("bear", "stuffed animal", (photo("chelsea"), photo("chelsea", (64, 80))), (0.5, 0.2, 0.95, 0.9)),
    "dog": SubjectInput("dog", "dog", (photo("astronaut"),), (0.0, 0.2, 0.5, 0.9)),
    "cup": SubjectInput("cup", "cup", (photo("coffee"),), (0.3, 0.5, 0.7, 0.9)),
}


def request(prompt: str, ids: tuple[str, ...], seed: int = 0, case: str = "c", size: int = 64) -> GenerationRequest:
    return GenerationRequest(case, prompt, "hugging", tuple(SUBJECTS[i] for i in ids), seed, size, size, "hug")


@pytest.fixture
def trained_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "trained"
    monkeypatch.setenv("RELBENCH_TRAINED_CACHE", str(root))
    return root


@pytest.fixture
def concepts(tmp_path: Path) -> list[str]:
    """--concept arguments for two small subjects."""
    argv = []
    for noun, names in (("dog", ("astronaut", "coffee")), ("stuffed animal", ("chelsea",))):
        folder = tmp_path / "data" / noun.replace(" ", "_")
        folder.mkdir(parents=True)
        for i, name in enumerate(names):
            photo(name, (96, 72)).save(folder / f"{i}.png")
        argv += ["--concept", f"{noun}={folder}"]
    return argv


def tiny_argv(concepts: list[str], output: Path, *extra: str) -> list[str]:
    return [*concepts, "--profile", "tiny", "--device", "cpu", "--output", str(output), "--gradient-accumulation-steps", "1",
            "--quiet", *extra]


class CountingTrainer:
    """Wraps a trainer's ``main`` to count trainings."""

    def __init__(self, module: Any, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        self._main = module.main
        monkeypatch.setattr(module, "main", self)

    def __call__(self, argv: list[str], **kwargs: Any) -> Any:
        self.calls += 1
        return self._main(argv, **kwargs)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=int)


# --------------------------------------------------------------------------------------------
# Tokens and prompts


def test_rare_and_initializer_tokens_are_single_clip_tokens() -> None:
    from relbench.tiny import clip_tokenizer

    tokenizer = clip_tokenizer()
    for token in common.RARE_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] > 40000, token  # one token, late in the merge list: a rare word
    for token in cd_train.INITIALIZER_TOKENS:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    with pytest.raises(RelbenchError, match="'zwx' is 2 CLIP tokens"):
        common.check_single_tokens([tokenizer], ["sks", "zwx"], "--tokens")


@pytest.mark.parametrize(
    ("prompt", "nouns", "expected"),
    [
        ("a dog hugging a stuffed animal", ["dog", "stuffed animal"], "a sks dog hugging a ohwx stuffed animal"),
        ("a dog hugging a cat", ["cat", "dog"], "a ohwx dog hugging a sks cat"),  # tokens follow the subjects
        ("a dog chasing a dog", ["dog", "dog"], "a sks dog chasing a ohwx dog"),  # the same noun twice, in order
        ("a cat toy next to a cat", ["cat", "cat toy"], "a ohwx cat toy next to a sks cat"),  # longer nouns first
        ("Two Cats near a category sign", ["cat"], "Two sks Cats near a category sign"),  # plural, case, whole words
        ("a stuffed  animal on a mat", ["stuffed animal"], "a sks stuffed  animal on a mat"),
    ],
)
def test_tokens_go_before_each_subjects_class_noun(prompt: str, nouns: list[str], expected: str) -> None:
    assert common.insert_tokens(prompt, nouns, ["sks", "ohwx"][: len(nouns)], "case c") == expected


def test_a_prompt_without_a_subjects_class_noun_is_refused() -> None:
    with pytest.raises(RelbenchError, match=r"case c: the prompt 'a dog next to a catapult' does not name the class noun 'cat' of subject 2"):
        common.insert_tokens("a dog next to a catapult", ["dog", "cat"], ["sks", "ohwx"], "case c")


def test_check_cases_refuses_bad_cases_before_any_model_loads() -> None:
    from relbench.methods.custom_diffusion.method import CustomDiffusion
    from relbench.methods.dreambooth_lora.method import DreamBoothLoRA

    bench = SimpleNamespace(subjects={k: SimpleNamespace(class_noun=s.class_noun) for k, s in SUBJECTS.items()} | {"x": SimpleNamespace(class_noun="x")})
    good = SimpleNamespace(id="ok", subjects=("dog", "bear"), prompt="a dog hugging a stuffed animal")
    for cls in (DreamBoothLoRA, CustomDiffusion):
        settings = cls.default_settings(TINY)
        cls.check_cases(settings, bench, [good])
        with pytest.raises(RelbenchError, match=rf"case four: method '{cls.name}' supports 1 to 3 subjects .*got 4"):
            cls.check_cases(settings, bench, [SimpleNamespace(id="four", subjects=("dog", "bear", "cup", "x"), prompt="p")])
        with pytest.raises(RelbenchError, match="case nocup: the prompt 'a dog and a mug' does not name the class noun 'cup'"):
            cls.check_cases(settings, bench, [SimpleNamespace(id="nocup", subjects=("dog", "cup"), prompt="a dog and a mug")])
    with pytest.raises(RelbenchError, match=r"--set dreambooth-lora.tokens: 'zwx' is 2 CLIP tokens"):
        DreamBoothLoRA.check_cases(DreamBoothLoRA.settings_from_overrides(TINY, {"tokens": "zwx,sks,ohwx"}), bench, [good])
    two_tokens = DreamBoothLoRA.settings_from_overrides(TINY, {"tokens": "sks,ohwx"})
    DreamBoothLoRA.check_cases(two_tokens, bench, [good])  # enough for two subjects
    three = SimpleNamespace(id="three", subjects=("dog", "bear", "cup"), prompt="a dog, a stuffed animal and a cup")
    with pytest.raises(RelbenchError, match="--set dreambooth-lora.tokens: 3 subjects need 3 tokens"):
        DreamBoothLoRA.check_cases(two_tokens, bench, [good, three])
    with pytest.raises(RelbenchError, match="--set custom-diffusion.initializer_tokens: 3 subjects need 3 tokens"):
        CustomDiffusion.check_cases(CustomDiffusion.settings_from_overrides(TINY, {"initializer_tokens": "pll,ucd"}), bench, [three])
    with pytest.raises(RelbenchError, match="--set custom-diffusion.freeze_model: expected one of crossattn_kv, crossattn"):
        CustomDiffusion.check_cases(CustomDiffusion.settings_from_overrides(TINY, {"freeze_model": "all"}), bench, [good])
    with pytest.raises(RelbenchError, match="--set custom-diffusion.mixed_precision: expected one of no, fp16, bf16"):
        CustomDiffusion.check_cases(CustomDiffusion.settings_from_overrides(TINY, {"mixed_precision": "fp8"}), bench, [good])
    # Declared ranges (one check for every method), then what a range cannot say.
    with pytest.raises(RelbenchError, match=r"^--set dreambooth-lora.rank=0: must be >= 1$"):
        DreamBoothLoRA.settings_from_overrides(TINY, {"rank": "0"})
    with pytest.raises(RelbenchError, match=r"^--set custom-diffusion.resolution=56: must be >= 64$"):
        CustomDiffusion.settings_from_overrides(TINY, {"resolution": "56"})
    for cls in (DreamBoothLoRA, CustomDiffusion):
        with pytest.raises(RelbenchError, match=rf"^--set {cls.name}.resolution: expected a multiple of 8, got 100$"):
            cls.check_cases(cls.settings_from_overrides(TINY, {"resolution": "100"}), bench, [good])
        cls.check_cases(cls.settings_from_overrides(TINY, {"resolution": "104"}), bench, [good])


# --------------------------------------------------------------------------------------------
# Training entries: arguments


@pytest.mark.parametrize("trainer", [db_train, cd_train], ids=["dreambooth-lora", "custom-diffusion"])
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--concept: at least one is required"),
        (["--concept", "dog"], '--concept \'dog\': expected "CLASS NOUN=DIR"'),
        (["--concept", "dog=/no/such/folder"], "/no/such/folder is not a folder of images"),
        (["--concept", "a={d}", "--concept", "b={d}", "--concept", "c={d}", "--concept", "e={d}"], "--concept: at most 3 concepts"),
        (["--concept", "dog={d}", "--max-train-steps", "0"], "--max-train-steps: expected a positive integer"),
        (["--concept", "dog={d}", "--resolution", "100"], "--resolution: expected a multiple of 8"),
        (["--concept", "dog={d}", "--learning-rate", "nan"], "--learning-rate: expected a finite number"),
        (["--concept", "dog={d}", "--model", "clip=x"], "unknown model key"),
        (["--concept", "dog={d}", "--mixed-precision", "fp8"], "argument --mixed-precision: invalid choice"),
        (["--concept", "dog={d}", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_training_arguments_are_checked_before_any_model_loads(trainer: Any, argv: list[str], message: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    photo("astronaut").save(folder / "0.png")
    monkeypatch.setattr(common, "load_sdxl_parts", lambda *a, **k: pytest.fail("a model loaded before the arguments were checked"))
    argv = [a.replace("{d}", str(folder)) for a in argv]
    with pytest.raises(RelbenchError, match=message):
        trainer.main([*argv, "--output", str(tmp_path / "out"), "--profile", "tiny", "--device", "cpu"])


def test_method_specific_arguments_are_checked(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "notes.txt").write_text("no image here")
    base = ["--output", str(tmp_path / "out"), "--profile", "tiny"]
    with pytest.raises(RelbenchError, match="holds no image"):
        db_train.parse_args(["--concept", f"dog={folder}", *base])
    photo("astronaut").save(folder / "0.png")
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(RelbenchError, match="broken.png: cannot read image"):
        db_train.parse_args(["--concept", f"dog={folder}", *base])
    (folder / "broken.png").unlink()
    concept = ["--concept", f"dog={folder}", "--concept", f"cat={folder}"]
    with pytest.raises(RelbenchError, match="--tokens: 2 concepts need 2 tokens, got 1"):
        db_train.parse_args([*concept, *base, "--tokens", "sks"])
    with pytest.raises(RelbenchError, match="--instance-prompt-template: 'a photo of {cls}' may use only"):
        db_train.parse_args([*concept, *base, "--instance-prompt-template", "a photo of {cls}"])
    with pytest.raises(RelbenchError, match="--initializer-tokens: 'ktn' is 2 CLIP tokens"):
        cd_train.parse_args([*concept, *base, "--initializer-tokens", "ktn+pll"])
    with pytest.raises(RelbenchError, match="--modifier-tokens: 'dog' must be a new word"):
        cd_train.parse_args([*concept, *base, "--modifier-tokens", "dog+<new2>"])
    args = db_train.parse_args([*concept, *base])
    assert args.max_train_steps == 1000 and args.tokens == ["sks", "ohwx"] and args.resolution == 64  # 500 per concept
    args = cd_train.parse_args([*concept, *base])
    assert args.max_train_steps == 500 and args.modifier_tokens == ["<new1>", "<new2>"] and args.initializer_tokens == ["ohwx", "pll"]


def test_latest_checkpoint_is_the_newest_complete_one(tmp_path: Path) -> None:
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / common.TRAINER_STATE).write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-x").mkdir()
    assert common.find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"  # 6 was cut short while saving
    assert common.find_latest_checkpoint(tmp_path / "checkpoint-x") is None


def test_epoch_order_shuffles_every_epoch_and_visits_each_item_once() -> None:
    first = [common.epoch_order(0, d, 5) for d in range(5)]
    second = [common.epoch_order(0, d, 5) for d in range(5, 10)]
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4]
    assert first != second  # a new shuffle each epoch
    assert first != [common.epoch_order(1, d, 5) for d in range(5)]  # and per seed
    assert [common.epoch_order(0, d, 5) for d in (7, 3, 7)] == [second[2], first[3], second[2]]  # a pure function of (seed, draw)


def test_draw_schedule_holds_each_micro_steps_epoch_order_draws_and_micro_batches_draw_what_accumulation_draws() -> None:
    # The draws the step loop used to make one at a time: micro-step n of process p draws (n x P + p) x batch + b.
    schedule = common.draw_schedule(3, 5, micro_steps=8, batch=2, processes=2, process=1, device="cpu")
    assert schedule.dtype == torch.long and tuple(schedule.shape) == (8, 2)
    assert schedule.tolist() == [[common.epoch_order(3, (n * 2 + 1) * 2 + b, 5) for b in range(2)] for n in range(8)]
    # One micro-batch of 4 per step draws the images of 4 accumulated micro-batches of 1 (the default 1 x 4).
    one_by_four = common.draw_schedule(0, 7, micro_steps=12, batch=1, processes=1, process=0, device="cpu")
    four_by_one = common.draw_schedule(0, 7, micro_steps=3, batch=4, processes=1, process=0, device="cpu")
    assert torch.equal(one_by_four.reshape(3, 4), four_by_one)


def test_prefetcher_makes_the_next_steps_on_one_worker_thread_in_order() -> None:
    import threading

    made: list[tuple[int, str]] = []

    def make(index: int) -> int:
        made.append((index, threading.current_thread().name))
        return index * 10

    prefetcher = common.Prefetcher(make, end=5, depth=2)
    try:
        assert [prefetcher.get(i) for i in (2, 3, 4)] == [20, 30, 40]  # a resumed run starts anywhere
    finally:
        prefetcher.close()
    assert [i for i, _ in made] == [2, 3, 4]  # ahead up to the end, each once, in order
    assert all(name.startswith("relbench-batches") for _, name in made)  # never on the training thread


# --------------------------------------------------------------------------------------------
# DreamBooth-LoRA


def lora_from_pipe(pipe: Any, adapter: str) -> dict[str, torch.Tensor]:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return {f"unet.{k}": v for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet, adapter_name=adapter)).items()}


def test_dreambooth_trains_two_steps_and_its_lora_loads_back(concepts: list[str], tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    from relbench.tiny import tiny_sdxl_components

    path = db_train.main(tiny_argv(concepts, tmp_path / "out", "--max-train-steps", "2", "--learning-rate", "1e-2"))
    assert path == tmp_path / "out" / db_train.LORA_WEIGHT_NAME
    state = db_train.read_lora(path)
    unet = tiny_sdxl_components(0)["unet"]
    targets = [n for n, _ in unet.named_modules() if n.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                                                                 "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"))]
    assert len(state) == 2 * len(targets) == 2 * 4 * 2 * 12  # down and up, 4 projections, self and cross, 12 blocks
    assert all(k.startswith("unet.") and k.endswith((".lora.down.weight", ".lora.up.weight")) for k in state)
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora.down.weight"
    assert tuple(state[key].shape) == (4, 64)  # rank 4 x cross-attention width
    ups = [v for k, v in state.items() if k.endswith("lora.up.weight")]
    assert all(float(v.abs().max()) > 0 for v in ups)  # up weights start at zero: training moved them
    tokens = json.loads((tmp_path / "out" / db_train.TOKENS_FILE).read_text())
    assert [(t["token"], t["class_noun"], t["instance_prompt"]) for t in tokens] == [
        ("sks", "dog", "a photo of sks dog"), ("ohwx", "stuffed animal", "a photo of ohwx stuffed animal")]

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(0), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    run = dict(prompt="a photo of sks dog", num_inference_steps=2, width=64, height=64, output_type="np")
    base = pipe(**run, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(str(path.parent), weight_name=db_train.LORA_WEIGHT_NAME, adapter_name="db")
    reloaded = lora_from_pipe(pipe, "db")
    assert reloaded.keys() == state.keys()
    for k in state:
        assert torch.equal(reloaded[k], state[k]), k
    tuned = pipe(**run, generator=torch.Generator().manual_seed(0)).images
    assert np.abs(tuned - base).max() > 1e-3  # the LoRA changes the image


class CountingSteps:
    """Wraps a trainer's ``run_training`` to count the micro-steps it runs."""

    def __init__(self, module: Any, monkeypatch: pytest.MonkeyPatch):
        self.steps = 0
        self._run = module.run_training
        monkeypatch.setattr(module, "run_training", self)

    def __call__(self, accelerator: Any, args: Any, job: Any, desc: str) -> None:
        step = job.micro_step

        def counted(*a: Any) -> Any:
            self.steps += 1
            return step(*a)

        return self._run(accelerator, args, dataclasses.replace(job, micro_step=counted), desc)


def test_dreambooth_resuming_from_a_checkpoint_continues_exactly(concepts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = ("--learning-rate", "1e-2", "--checkpointing-steps", "2", "--train-batch-size", "2")
    whole = db_train.main(tiny_argv(concepts, tmp_path / "whole", "--max-train-steps", "4", *steps))
    assert (tmp_path / "whole" / "checkpoint-2").is_dir() and not (tmp_path / "whole" / "checkpoint-4").exists()  # the end saves weights only
    split = tmp_path / "split"
    db_train.main(tiny_argv(concepts, split, "--max-train-steps", "3", *steps))  # leaves checkpoint-2
    assert json.loads((split / "checkpoint-2" / common.TRAINER_STATE).read_text()) == {"global_step": 2}
    counter = CountingSteps(db_train, monkeypatch)
    resumed = db_train.main(tiny_argv(concepts, split, "--max-train-steps", "4", *steps, "--resume-from-checkpoint", "latest"))
    assert counter.steps == 2  # steps 3 and 4 only
    a, b = db_train.read_lora(whole), db_train.read_lora(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_dreambooth_prior_preservation_generates_class_images_once(concepts: list[str], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = common.sdxl_pipeline
    monkeypatch.setattr(common, "sdxl_pipeline", lambda parts: calls.append(1) or real(parts))
    argv = tiny_argv(concepts, tmp_path / "out", "--max-train-steps", "1", "--with-prior-preservation", "--num-class-images", "2",
                     "--class-data-dir", str(tmp_path / "classes"))
    db_train.main(argv)
    assert sorted(p.name for p in (tmp_path / "classes" / "stuffed-animal").iterdir()) == ["0000.png", "0001.png"]
    assert sorted(p.name for p in (tmp_path / "classes" / "dog").iterdir()) == ["0000.png", "0001.png"]
    assert Image.open(tmp_path / "classes" / "dog" / "0000.png").size == (64, 64)
    assert len(calls) == 2  # one pipeline per class noun
    db_train.main(argv)
    assert len(calls) == 2  # the class images were there: none generated again


def test_dreambooth_method_trains_once_per_subject_set_and_reuses_the_cache(trained_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relbench.methods.dreambooth_lora.method import DreamBoothLoRA

    trainer = CountingTrainer(db_train, monkeypatch)
    method = DreamBoothLoRA(TINY)
    hug = request("a dog hugging a stuffed animal", ("dog", "bear"), seed=0)
    reversed_order = request("a stuffed animal hugging a dog", ("bear", "dog"), seed=1)
    other = request("a dog next to a cup", ("dog", "cup"), seed=0)
    first = method.generate([hug, reversed_order, other])
    assert trainer.calls == 2  # (bear, dog) in either order is one subject set
    assert [im.size for im in first] == [(64, 64)] * 3 and all(im.mode == "RGB" for im in first)
    assert len(list((trained_cache / "dreambooth-lora").glob("*/*/complete.json"))) == 2
    again = method.generate([hug])
    assert trainer.calls == 2 and np.array_equal(pixels(again[0]), pixels(first[0]))
    # A new instance (another run of the sweep) finds the weights on disk.
    fresh = DreamBoothLoRA(TINY)
    assert np.array_equal(pixels(fresh.generate([hug])[0]), pixels(first[0])) and trainer.calls == 2
    # Sampling settings do not touch the weights; training settings and other reference pixels do.
    DreamBoothLoRA(TINY, DreamBoothLoRA.settings_from_overrides(TINY, {"guidance_scale": "7.5"})).generate([hug])
    assert trainer.calls == 2
    retrained = DreamBoothLoRA(TINY, DreamBoothLoRA.settings_from_overrides(TINY, {"learning_rate": "0.01"}))
    changed = retrained.generate([hug])
    assert trainer.calls == 3 and not np.array_equal(pixels(changed[0]), pixels(first[0]))
    new_photo = dataclasses.replace(SUBJECTS["dog"], images=(photo("rocket"),))
    method.generate([dataclasses.replace(hug, subjects=(new_photo, SUBJECTS["bear"]))])
    assert trainer.calls == 4
    settings = method.settings()
    assert settings["training_settings"]["learning_rate"] == 1e-4 and settings["training_settings"]["model"]["id"] == "tiny:sdxl"


def test_dreambooth_prompts_carry_each_subjects_rare_token(trained_cache: Path) -> None:
    from relbench.methods.dreambooth_lora.method import DreamBoothLoRA

    method = DreamBoothLoRA(TINY)
    seen: list[Any] = []
    real = method.pipe

    class Spy:
        def __call__(self, **kwargs: Any) -> Any:
            seen.append(kwargs)
            return real(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    method.pipe = Spy()
    # Tokens go to the subjects sorted by id: bear -> sks, dog -> ohwx, whatever the prompt order.
    method.generate([request("a dog hugging a stuffed animal", ("dog", "bear"), seed=3)])
    assert seen[0]["prompt"] == ["a ohwx dog hugging a sks stuffed animal"]
    assert seen[0]["negative_prompt"] == ["monochrome, lowres, bad anatomy, worst quality, low quality"]
    assert seen[0]["num_inference_steps"] == 2 and seen[0]["guidance_scale"] == 5.0
    assert method.prompt_for(request("a cup on a dog", ("cup", "dog"))) == "a sks cup on a ohwx dog"
    four = GenerationRequest("four", "p", "r", tuple(SUBJECTS.values()) + (dataclasses.replace(SUBJECTS["cup"], id="cup2"),), 0, 64, 64)
    with pytest.raises(RelbenchError, match="case four: method 'dreambooth-lora' supports 1 to 3 subjects, got 4"):
        method.generate([four])


# --------------------------------------------------------------------------------------------
# Custom Diffusion


def test_custom_diffusion_processors_start_as_the_base_cross_attention() -> None:
    from relbench.tiny import tiny_sdxl_components

    unet = tiny_sdxl_components(0)["unet"]
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(1))
    cond = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        before = unet(sample, 10, context, added_cond_kwargs=cond).sample
        procs = cd_train.custom_diffusion_processors(unet, train_q_out=False)
        cd_train.install_processors(unet, procs)
        after = unet(sample, 10, context, added_cond_kwargs=cond).sample
    assert len(procs) == 12 and all(name.endswith("attn2.processor") for name in procs)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_new_token_embeddings_train_only_the_new_rows() -> None:
    table = torch.nn.Embedding(10, 3)
    table.requires_grad_(False)
    module = cd_train._new_token_module()(table, [8, 9], torch.ones(2, 3))
    out = table(torch.tensor([[1, 8, 9, 8]]))
    assert torch.equal(out[0, 0], table.weight[1]) and torch.equal(out[0, 1], torch.ones(3))
    out.sum().backward()
    assert table.weight.grad is None
    torch.testing.assert_close(module.weight.grad, torch.full((2, 3), 2.0).mul(torch.tensor([[1.0], [0.5]])))  # 8 twice, 9 once


def diffusers_attn_procs_keys(unet: Any, tmp_path: Path) -> set[str]:
    """The keys diffusers' ``save_attn_procs`` writes for Custom Diffusion processors (its example's set-up)."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0
    from safetensors.torch import load_file

    procs = {}
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            procs[name] = CustomDiffusionAttnProcessor2_0(train_kv=False, train_q_out=False, hidden_size=None, cross_attention_dim=None)
        else:
            attn = unet.get_submodule(name[: -len(".processor")])
            procs[name] = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out=False, hidden_size=attn.to_k.out_features,
                                                          cross_attention_dim=attn.to_k.in_features)
    unet.set_attn_processor(procs)
    unet.save_attn_procs(str(tmp_path / "diffusers"))
    return set(load_file(str(tmp_path / "diffusers" / cd_train.WEIGHT_NAME)))


def test_custom_diffusion_trains_two_steps_and_its_weights_load_back(concepts: list[str], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from relbench.tiny import tiny_sdxl_components

    out = cd_train.main(tiny_argv(concepts, tmp_path / "out", "--max-train-steps", "2", "--learning-rate", "1e-2"))
    state = cd_train.read_weights(out / cd_train.WEIGHT_NAME)
    assert set(state) == diffusers_attn_procs_keys(tiny_sdxl_components(0)["unet"], tmp_path)
    base = tiny_sdxl_components(0)
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight"
    start = base["unet"].get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn2").to_k.weight
    assert not torch.equal(state[key], start)  # training moved the keys
    tokenizer = base["tokenizer"]
    table = base["text_encoder"].get_input_embeddings().weight
    for token, initializer in (("<new1>", "ohwx"), ("<new2>", "pll")):
        embeds = load_file(str(out / f"{token}.safetensors"))
        assert set(embeds) == {"clip_l", "clip_g"} and embeds["clip_l"].shape == (32,)
        start = table[tokenizer.encode(initializer, add_special_tokens=False)[0]]
        assert 0 < float((embeds["clip_l"] - start.detach()).abs().max()) < 1.0  # started from the initializer, then trained

    # Loaded the way the method loads them: processors, then each token into both encoders.
    from relbench.methods.custom_diffusion.method import CustomDiffusion

    method = CustomDiffusion(TINY)
    method.activate(out, [SUBJECTS["dog"], SUBJECTS["bear"]])
    for name, proc in method.pipe.unet.attn_processors.items():
        for param, value in (proc.state_dict().items() if isinstance(proc, torch.nn.Module) else ()):
            assert torch.equal(value, state[f"{name}.{param}"]), name
    assert sum(isinstance(p, torch.nn.Module) for p in method.pipe.unet.attn_processors.values()) == 12
    for tokenizer, encoder, key in ((method.pipe.tokenizer, method.pipe.text_encoder, "clip_l"),
                                    (method.pipe.tokenizer_2, method.pipe.text_encoder_2, "clip_g")):
        ids = tokenizer.encode("a <new1> dog", add_special_tokens=False)
        assert len(ids) == 3  # the modifier token is one token
        assert torch.equal(encoder.get_input_embeddings().weight[ids[1]], load_file(str(out / "<new1>.safetensors"))[key])


def test_custom_diffusion_resuming_from_a_checkpoint_continues_exactly(concepts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = ("--learning-rate", "1e-2", "--checkpointing-steps", "1", "--train-batch-size", "2")
    whole = cd_train.main(tiny_argv(concepts, tmp_path / "whole", "--max-train-steps", "2", *steps))
    split = tmp_path / "split"
    cd_train.main(tiny_argv(concepts, split, "--max-train-steps", "2", *steps))
    (split / cd_train.WEIGHT_NAME).unlink()
    counter = CountingSteps(cd_train, monkeypatch)
    resumed = cd_train.main(tiny_argv(concepts, split, "--max-train-steps", "2", *steps, "--resume-from-checkpoint", "latest"))
    assert counter.steps == 1  # step 2 only: the weights, optimizer and augmentation stream came from checkpoint-1
    a, b = cd_train.read_weights(whole / cd_train.WEIGHT_NAME), cd_train.read_weights(resumed / cd_train.WEIGHT_NAME)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    for token in ("<new1>", "<new2>"):
        torch.testing.assert_close(cd_train.read_embeddings(whole, token)["clip_g"], cd_train.read_embeddings(resumed, token)["clip_g"], rtol=0, atol=1e-6)


def test_custom_diffusion_augmentation_masks_what_the_image_covers() -> None:
    import random

    image = photo("chelsea", (40, 30))
    small = next(v for v in (cd_train.augment(image, 64, 2, random.Random(s), True, False) for s in range(200)) if v[2] in ("a far away ", "very small "))
    pixels_, mask, _ = small
    assert pixels_.shape == (3, 64, 64) and mask.shape == (32, 32)
    assert 0 < float(mask.mean()) < 0.36  # the image covers under 0.6 x 0.6 of the canvas
    rows, cols = np.nonzero(mask.numpy())
    assert float(pixels_[:, rows.min() * 2, cols.min() * 2].abs().sum()) > 0  # image under the mask
    assert float((pixels_.abs().sum(0) == 0).float().mean()) > 0.6  # a blank canvas around it
    big = next(v for v in (cd_train.augment(image, 64, 2, random.Random(s), True, False) for s in range(200)) if v[2] in ("zoomed in ", "close up "))
    assert float(big[1].mean()) == 1.0
    plain = cd_train.augment(image, 64, 2, random.Random(0), False, False)
    assert plain[2] == "" and float(plain[1].sum()) == 30 * 30  # no augmentation: full size, one cell in from each edge


def test_custom_diffusion_prior_preservation_trains(concepts: list[str], tmp_path: Path) -> None:
    out = cd_train.main(tiny_argv(concepts, tmp_path / "out", "--max-train-steps", "1", "--with-prior-preservation", "--num-class-images", "1",
                                  "--train-batch-size", "1"))
    assert [p.name for p in (out / "class-images" / "dog").iterdir()] == ["0000.png"]
    config = json.loads((out / "training_config.json").read_text())
    assert config["base_learning_rate"] == 1e-5 and config["learning_rate"] == pytest.approx(2e-5)  # x1 x1 x1, x2 for the prior


def test_custom_diffusion_method_switches_subject_sets_cleanly(trained_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relbench.methods.custom_diffusion.method import CustomDiffusion

    trainer = CountingTrainer(cd_train, monkeypatch)
    method = CustomDiffusion(TINY)
    vocabulary = len(method.pipe.tokenizer)
    hug = request("a dog hugging a stuffed animal", ("dog", "bear"), seed=0)
    cup = request("a dog next to a cup", ("dog", "cup"), seed=0)
    first = method.generate([hug])[0]
    method.generate([cup])
    assert len(method.pipe.tokenizer) == len(method.pipe.tokenizer_2) == vocabulary + 2  # the previous set's tokens are gone
    back = method.generate([hug])[0]
    assert trainer.calls == 2
    assert np.array_equal(pixels(first), pixels(back))  # switching back restores the set exactly
    assert method.prompt_for(hug) == "a <new2> dog hugging a <new1> stuffed animal"  # bear < dog
    assert np.asarray(first).std() > 1.0
    settings = method.settings()
    assert settings["guidance_scale"] == 6.0 and settings["training_settings"]["freeze_model"] == "crossattn_kv"


# --------------------------------------------------------------------------------------------
# Both methods on the demo benchmark


@pytest.mark.parametrize("name", ["dreambooth-lora", "custom-diffusion"])
def test_demo_generation_is_deterministic_per_seed(name: str, trained_cache: Path) -> None:
    from relbench.benchmarks import load_benchmark
    from relbench.data_root import resolve_data_root
    from relbench.runner import SubjectInputs

    cls = {"dreambooth-lora": "relbench.methods.dreambooth_lora.method:DreamBoothLoRA",
           "custom-diffusion": "relbench.methods.custom_diffusion.method:CustomDiffusion"}[name]
    module, _, attr = cls.partition(":")
    import importlib

    method = getattr(importlib.import_module(module), attr)(TINY)
    bench = load_benchmark("demo")
    inputs = SubjectInputs(bench, resolve_data_root())
    a, b = inputs.request(bench.cases[0], 0, 64, 64), inputs.request(bench.cases[0], 1, 64, 64)
    first = method.generate([a, b])
    again = method.generate([a])
    assert np.abs(pixels(first[0]) - pixels(again[0])).max() <= 2  # same seed, same image, batched or alone (float noise)
    assert np.abs(pixels(first[0]) - pixels(first[1])).mean() > 1  # another seed, another image
    assert np.asarray(first[0]).std() > 1.0



METHOD_CLASSES = {
    "dreambooth-lora": ("relbench.methods.dreambooth_lora.method", "DreamBoothLoRA", db_train),
    "custom-diffusion": ("relbench.methods.custom_diffusion.method", "CustomDiffusion", cd_train),
}


@pytest.mark.parametrize("name", list(METHOD_CLASSES))
def test_full_profile_trains_and_generates_from_a_local_sdxl_folder(name: str, trained_cache: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The full profile's loading code (a hub id or a local folder, in the method and in its trainer),
    run on a pipeline saved from the tiny components."""
    import importlib

    from diffusers import StableDiffusionXLPipeline

    from relbench.tiny import tiny_sdxl_components

    module, attr, trainer_module = METHOD_CLASSES[name]
    StableDiffusionXLPipeline(**tiny_sdxl_components(0), add_watermarker=False).save_pretrained(tmp_path / "sdxl")
    trainer = CountingTrainer(trainer_module, monkeypatch)
    cls = getattr(importlib.import_module(module), attr)
    context = RunContext(profile="full", device="cpu", model_overrides={"sdxl": str(tmp_path / "sdxl")})
    overrides = {"max_train_steps_per_subject": "1", "gradient_accumulation_steps": "1", "train_batch_size": "1",
                 "resolution": "64", "num_inference_steps": "2"}
    method = cls(context, cls.settings_from_overrides(context, overrides))
    settings = method.settings()
    assert settings["model"]["id"] == str(tmp_path / "sdxl") and settings["dtype"] == "float32" and settings["mixed_precision"] == "no"
    image = method.generate([request("a dog hugging a stuffed animal", ("dog", "bear"))])[0]
    assert trainer.calls == 1 and image.size == (64, 64)
    config = json.loads(next(trained_cache.glob(f"{name}/*/*/training_config.json")).read_text())
    assert config["model"]["sdxl"]["id"] == str(tmp_path / "sdxl") and config["profile"] == "full"
    # The same weights as the tiny profile's: the same image from the same training.
    tiny = cls(TINY, cls.settings_from_overrides(TINY, overrides))
    other = tiny.generate([request("a dog hugging a stuffed animal", ("dog", "bear"))])[0]
    assert np.abs(pixels(image) - pixels(other)).max() <= 2


# --------------------------------------------------------------------------------------------
# One resident SDXL, train first, then sample in batches


def count_unet_forwards(pipe: Any) -> list[int]:
    calls: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def trained_weights(name: str, folder: Path) -> dict[str, torch.Tensor]:
    if name == "dreambooth-lora":
        return db_train.read_lora(folder / db_train.LORA_WEIGHT_NAME)
    state = cd_train.read_weights(folder / cd_train.WEIGHT_NAME)
    for token in ("<new1>", "<new2>"):
        state.update({f"{token}.{k}": v for k, v in cd_train.read_embeddings(folder, token).items()})
    return state


@pytest.mark.parametrize("name", list(METHOD_CLASSES))
def test_trainings_borrow_the_methods_sdxl_and_give_the_weights_and_images_of_a_fresh_load(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    module, attr, trainer_module = METHOD_CLASSES[name]
    cls = getattr(importlib.import_module(module), attr)
    loads: list[int] = []
    real_load = common.load_sdxl_parts
    monkeypatch.setattr(common, "load_sdxl_parts", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    trainer = CountingTrainer(trainer_module, monkeypatch)
    requests = [request("a dog hugging a stuffed animal", ("dog", "bear")), request("a dog next to a cup", ("dog", "cup"), seed=1)]
    sets = [common.subject_set(r.subjects) for r in requests]

    monkeypatch.setenv("RELBENCH_TRAINED_CACHE", str(tmp_path / "resident"))
    method = cls(TINY)
    assert method.lends_sdxl()  # tiny: float32 weights, no mixed precision
    vocabulary = len(method.pipe.tokenizer)
    method.train_ahead(requests)
    assert trainer.calls == 2 and len(loads) == 1  # two subject sets trained on the SDXL the method loaded
    assert len(method.pipe.tokenizer) == vocabulary and not getattr(method.pipe.unet, "peft_config", None)
    assert all(not isinstance(p, torch.nn.Module) for p in method.pipe.unet.attn_processors.values())  # the base model again
    resident = [trained_weights(name, method.train(s)) for s in sets]
    images = method.generate(requests)

    # Today's path: each training loads its own SDXL.
    monkeypatch.setenv("RELBENCH_TRAINED_CACHE", str(tmp_path / "loaded"))
    old = cls(TINY)
    monkeypatch.setattr(old, "lends_sdxl", lambda: False)
    old_images = old.generate(requests)
    assert trainer.calls == 4 and len(loads) == 2 + 2
    for got, expected in zip(resident, [trained_weights(name, old.train(s)) for s in sets]):
        assert got.keys() == expected.keys()
        for key in got:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    for a, b in zip(images, old_images):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


@pytest.mark.parametrize("name", list(METHOD_CLASSES))
def test_a_subject_sets_cases_and_seeds_share_a_pipeline_call(name: str, trained_cache: Path) -> None:
    import importlib

    module, attr, _ = METHOD_CLASSES[name]
    method = getattr(importlib.import_module(module), attr)(TINY)
    # Case-major, as the runner lists them: two cases of each of two subject sets, two seeds each.
    cases = [("a dog hugging a stuffed animal", ("dog", "bear")), ("a dog next to a cup", ("dog", "cup")),
             ("a stuffed animal on a dog", ("bear", "dog")), ("a cup under a dog", ("cup", "dog"))]
    requests = [request(prompt, ids, seed=seed, case=f"c{i}") for i, (prompt, ids) in enumerate(cases) for seed in (0, 1)]
    order = method.batch_order(requests)
    assert order == [0, 1, 4, 5, 2, 3, 6, 7]  # (bear, dog) in either order, then (cup, dog)
    method.train_ahead(requests)
    calls = count_unet_forwards(method.pipe)
    alone = [method.generate([r])[0] for r in requests]
    assert len(calls) == 8 * 2  # one call per image, two steps each (guidance in the same forward)
    del calls[:]
    by_batch = {}
    for start in range(0, len(order), method.batch_size):  # the runner's batches
        batch = order[start : start + method.batch_size]
        by_batch.update(zip(batch, method.generate([requests[i] for i in batch])))
    assert len(calls) == 2 * 2  # one call per subject set (4 images each)
    del calls[:]
    for start in range(0, len(requests), method.batch_size):  # without the order: both sets in each batch
        method.generate(requests[start : start + method.batch_size])
    assert len(calls) == 4 * 2
    for i, image in enumerate(alone):
        assert np.abs(pixels(image) - pixels(by_batch[i])).max() <= 2  # the image of one call per request (float noise)


@pytest.mark.parametrize("trainer", [db_train, cd_train], ids=["dreambooth-lora", "custom-diffusion"])
def test_training_steps_make_no_host_reads_or_host_tensors_on_the_training_thread(trainer: Any, concepts: list[str], tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU each of these waits for the device (a read back, or a copy from pageable host memory)."""
    import threading

    in_step: list[bool] = [False]
    seen: list[str] = []

    def watch(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def watched(*a: Any, **k: Any) -> Any:
            if in_step[0] and threading.current_thread() is threading.main_thread():
                seen.append(name)
            return real(*a, **k)

        monkeypatch.setattr(owner, name, watched)

    for name in ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__"):
        watch(torch.Tensor, name)
    watch(torch, "tensor")
    real_run = trainer.run_training

    def run(accelerator: Any, args: Any, job: Any, desc: str) -> Any:
        def step(*a: Any) -> Any:
            in_step[0] = True
            try:
                return job.micro_step(*a)
            finally:
                in_step[0] = False

        return real_run(accelerator, args, dataclasses.replace(job, micro_step=step), desc)

    monkeypatch.setattr(trainer, "run_training", run)
    trainer.main(tiny_argv(concepts, tmp_path / "out", "--max-train-steps", "3", "--train-batch-size", "2", "--log-every", "100"))
    assert seen == []
