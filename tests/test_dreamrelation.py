"""DreamRelation training and inference in the tiny profile: losses move, checkpoints resume
exactly, LoRAs round-trip in diffusers' format, and train -> evaluate works end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from relbench.errors import RelbenchError
from relbench.methods.dreamrelation import train
from relbench.methods.dreamrelation.lora import (
    LORA_WEIGHT_NAME, add_relation_lora, lora_state_dict, read_lora_file, resolve_lora_file, save_relation_lora,
)


@pytest.fixture
def one_triplet(shared_data: Path, tmp_path: Path) -> Path:
    """A data folder holding only hug/0 (for overfitting)."""
    source = shared_data / "dreamrelation" / "hug"
    target = tmp_path / "one" / "hug"
    shutil.copytree(source / "videos" / "0", target / "videos" / "0")
    shutil.copytree(source / "masks" / "0", target / "masks" / "0")
    prompts = json.loads((source / "prompts.json").read_text())
    (target / "prompts.json").write_text(json.dumps({"0": prompts["0"]}))
    return tmp_path / "one"


def tiny_args(data_root: Path, output: Path, relation: str = "hug", *extra: str) -> list[str]:
    return ["--profile", "tiny", "--device", "cpu", "--data-root", str(data_root), "--relation", relation,
            "--output", str(output), "--gradient-accumulation-steps", "1", "--quiet", *extra]


def test_overfitting_one_triplet_reduces_the_diffusion_and_keypoint_losses(one_triplet: Path, tmp_path: Path) -> None:
    """The standard sanity check: gradient steps on one fixed batch must fit it."""
    args = train.parse_args(tiny_args(one_triplet, tmp_path / "out", "hug", "--augment", "none"))
    setup = train.prepare(args, "cpu", "float32")
    optimizer = torch.optim.AdamW(setup.trainable, lr=1e-2)
    timesteps = torch.tensor([200])  # <= 333: KML counts

    def losses() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        generator = train.step_generator(1234, 0, 0, torch.device("cpu"))  # the same batch and noise every time
        return train.training_step(setup.models, setup.models.unet, setup.models.adapter.image_proj, setup.cache,
                                   setup.weights, setup.store, generator, args, setup.alphas_cumprod, timesteps=timesteps)

    with torch.no_grad():
        _, first = losses()
    for _ in range(60):
        loss, _ = losses()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        _, last = losses()
    assert float(first["kml/points"]) > 0 and float(first["attn/layers"]) > 0
    assert float(last["diffusion"]) < 0.85 * float(first["diffusion"])
    assert float(last["kml"]) < 0.75 * float(first["kml"])
    assert len(setup.store.maps) == 0  # maps are cleared after every step


def test_training_reduces_the_fixed_batch_losses(one_triplet: Path, tmp_path: Path) -> None:
    argv = tiny_args(one_triplet, tmp_path / "out", "hug", "--augment", "none")
    before = train.fixed_batch_losses(argv)
    lora = train.main([*argv, "--max-train-steps", "150", "--learning-rate", "1e-2", "--checkpointing-steps", "1000"])
    after = train.fixed_batch_losses(argv, lora=lora)
    assert after["diffusion"] < 0.95 * before["diffusion"]
    assert after["kml"] < 0.97 * before["kml"]


def test_resuming_from_a_checkpoint_continues_exactly(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "dreamrelation"
    whole = train.main(tiny_args(data, tmp_path / "whole", "shake", "--max-train-steps", "4", "--checkpointing-steps", "2"))
    split = tmp_path / "split"
    train.main(tiny_args(data, split, "shake", "--max-train-steps", "2", "--checkpointing-steps", "2"))
    assert (split / "checkpoint-2" / LORA_WEIGHT_NAME).is_file()
    resumed = train.main(tiny_args(data, split, "shake", "--max-train-steps", "4", "--checkpointing-steps", "2",
                                   "--resume-from-checkpoint", "latest"))
    a, b = read_lora_file(whole), read_lora_file(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    initial = lora_state_dict(_fresh_lora_unet())
    assert any(not torch.equal(a[k], initial[k]) for k in a)  # training moved the weights
    assert json.loads((split / "checkpoint-4" / "trainer_state.json").read_text()) == {"global_step": 4}


def test_checkpoint_limit_keeps_the_newest(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    train.main(tiny_args(shared_data / "dreamrelation", out, "hug", "--max-train-steps", "3", "--checkpointing-steps", "1",
                         "--checkpoints-total-limit", "2"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    config = json.loads((out / "training_config.json").read_text())
    assert config["relation"] == "hug" and config["models"]["sdxl"]["id"] == "tiny:sdxl" and len(config["lora_sha256"]) == 64


def _fresh_lora_unet():
    from relbench.tiny import tiny_sdxl_components

    unet = tiny_sdxl_components(0)["unet"]
    add_relation_lora(unet, seed=0)
    return unet


def test_lora_saves_in_diffusers_format_and_loads_back(tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    from relbench.tiny import tiny_sdxl_components

    unet = _fresh_lora_unet()
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_()  # up weights start at zero: make the LoRA do something
    path = save_relation_lora(unet, tmp_path / "lora")
    assert resolve_lora_file(tmp_path / "lora") == path
    state = read_lora_file(path)
    assert all(k.startswith("unet.") and (k.endswith(".lora.down.weight") or k.endswith(".lora.up.weight")) for k in state)
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(0), add_watermarker=False)
    pipe.load_lora_weights(str(path), adapter_name="relation")
    reloaded = lora_state_dict_from_pipe(pipe)
    for key, value in lora_state_dict(unet).items():
        torch.testing.assert_close(reloaded[key], value, msg=key)


def lora_state_dict_from_pipe(pipe) -> dict[str, torch.Tensor]:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet, adapter_name="relation"))
    return {f"unet.{k}": v for k, v in layers.items()}


def test_lora_keys_and_shapes_match_the_public_sdxl_layout() -> None:
    """An SDXL-sized UNet (meta device) gets LoRAs with the released files' key names and shapes."""
    from sdxl_shapes import sdxl_unet

    unet = sdxl_unet("meta")
    add_relation_lora(unet)
    state = lora_state_dict(unet)
    attn2 = [name for name, _ in unet.named_modules() if name.endswith("attn2")]
    assert len(attn2) == 70
    assert len(state) == 70 * 4 * 2
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora.down.weight"
    assert tuple(state[key].shape) == (4, 2048)  # rank 4 x cross_attention_dim
    assert tuple(state[key.replace("to_k.lora.down", "to_out.0.lora.up")].shape) == (640, 4)
    assert tuple(state["unet.mid_block.attentions.0.transformer_blocks.9.attn2.to_q.lora.down.weight"].shape) == (4, 1280)


def test_truncated_and_foreign_lora_files_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = save_relation_lora(_fresh_lora_unet(), tmp_path / "lora")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RelbenchError, match="not a readable safetensors file"):
        read_lora_file(tmp_path / "cut.safetensors")
    save_file({"text_encoder.x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(RelbenchError, match="holds no UNet LoRA weights"):
        read_lora_file(tmp_path / "other.safetensors")
    with pytest.raises(RelbenchError, match="LoRA weights not found"):
        resolve_lora_file(tmp_path / "missing")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-train-steps", "0"], "--max-train-steps: expected a positive integer"),
        (["--resolution", "100"], "--resolution: expected a multiple of 16"),
        (["--local-features"], "add --train-resampler"),
        (["--learning-rate", "nan"], "--learning-rate: expected a finite number"),
        (["--skeleton", "smpl"], "unknown skeleton 'smpl'"),
        (["--resume-from-checkpoint", "/nonexistent"], "no such checkpoint folder"),
        (["--model", "sdxl"], "expected KEY=HUB_ID_OR_PATH"),
    ],
)
def test_arguments_are_validated_before_any_work(shared_data: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    with pytest.raises(RelbenchError, match=message):
        train.parse_args(tiny_args(shared_data / "dreamrelation", tmp_path / "o", "hug", *extra))


def test_data_root_and_relation_are_checked(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(RelbenchError, match="not a DreamRelation relation folder"):
        train.parse_args(tiny_args(shared_data / "dreamrelation", tmp_path / "o", "kiss"))
    # a relbench data root (holding dreamrelation/) is accepted as well
    args = train.parse_args(tiny_args(shared_data, tmp_path / "o", "hug"))
    assert args.data_root == shared_data / "dreamrelation" and args.resolution == 64
    broken = tmp_path / "broken"
    shutil.copytree(shared_data / "dreamrelation" / "hug", broken / "hug")
    torch.save(torch.full((2, 17, 2), 1.5), broken / "hug" / "videos" / "1" / "motion_keyposes.pth")
    (broken / "hug" / "videos" / "1" / "motion_keyposes.pth").chmod(0o644)
    with pytest.raises(RelbenchError, match="motion_keyposes"):
        train.parse_args(tiny_args(broken, tmp_path / "o", "hug"))


def test_train_then_evaluate_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    """relbench train dreamrelation (tiny) -> relbench evaluate --method dreamrelation --lora."""
    from relbench.runner import EvaluateOptions, evaluate
    from relbench.runstore import read_rows

    lora = train.main(tiny_args(shared_data / "dreamrelation", tmp_path / "lora", "hug", "--max-train-steps", "3",
                                "--learning-rate", "1e-2"))
    common = dict(benchmark="demo", relations=["hug"], metrics=["clip_t"], seeds=(0, 1), progress=False)
    summary = evaluate(EvaluateOptions(output=tmp_path / "run", methods=["dreamrelation", "ms-diffusion"],
                                       method_overrides={"dreamrelation": {"loras": f"hug={lora}"}}, **common))
    assert summary.rows == 4
    rows = {(r["method"], r["seed"]): r for r in read_rows(tmp_path / "run" / "samples.jsonl")}
    settings = rows[("dreamrelation", 0)]["method_settings"]
    assert settings["lora_files"]["hug"]["sha256"] == json.loads((tmp_path / "lora" / "training_config.json").read_text())["lora_sha256"]
    with_lora = np.asarray(_image(tmp_path / "run", rows[("dreamrelation", 0)]), dtype=int)
    without = np.asarray(_image(tmp_path / "run", rows[("ms-diffusion", 0)]), dtype=int)
    assert with_lora.shape == (64, 64, 3) and np.abs(with_lora - without).max() > 0  # the LoRA changes the image
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["methods"]["dreamrelation"]["settings"]["lora_sha256"]["hug"] == settings["lora_files"]["hug"]["sha256"]


def test_three_subject_cases_generate(tmp_path: Path) -> None:
    from relbench.method import GenerationRequest, SubjectInput
    from relbench.methods.ms_diffusion.method import MSDiffusion
    from relbench.profiles import RunContext
    from PIL import Image

    method = MSDiffusion(RunContext(profile="tiny"))
    images = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    boxes = [(0.0, 0.2, 0.45, 0.85), (0.45, 0.2, 0.7, 0.85), (0.55, 0.25, 0.95, 0.9)]
    subjects = tuple(SubjectInput(f"s{i}", noun, (img,), box) for i, (noun, img, box) in enumerate(zip(("dog", "cat", "bear"), images, boxes)))
    request = GenerationRequest("c3", "a dog, a cat and a bear hugging", "hugging", subjects, 0, 64, 64, "hug")
    (image,) = method.generate([request])
    assert image.size == (64, 64)
    with pytest.raises(RelbenchError, match="supports 1 to 3 subjects, got 4"):
        method.generate([GenerationRequest("c4", "p", "r", subjects + subjects[:1], 0, 64, 64)])


def _image(run: Path, row: dict):
    from PIL import Image

    with Image.open(run / row["image"]) as image:
        return image.convert("RGB")


@pytest.mark.slow
def test_cli_train_single_and_two_processes(shared_data: Path, tmp_path: Path) -> None:
    """`relbench train dreamrelation` and the same entry under `accelerate launch` with 2 CPU processes."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    data = str(shared_data / "dreamrelation")
    single = subprocess.run([sys.executable, "-m", "cli", "train", "dreamrelation", *tiny_args(Path(data), tmp_path / "one", "hug",
                             "--max-train-steps", "2")], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
    assert single.returncode == 0, single.stderr
    assert f"weights: {tmp_path / 'one' / LORA_WEIGHT_NAME}" in single.stdout
    bad = subprocess.run([sys.executable, "-m", "cli", "train", "dreamrelation", "--relation", "hug", "--data-root", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr

    accelerate = Path(sys.executable).parent / "accelerate"
    two = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "relbench.methods.dreamrelation.train",
                          *tiny_args(Path(data), tmp_path / "two", "hug", "--max-train-steps", "2", "--checkpointing-steps", "1")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert (tmp_path / "two" / "checkpoint-1" / "random_states_1.pkl").is_file()  # two processes ran
    assert read_lora_file(tmp_path / "two" / LORA_WEIGHT_NAME)


def test_local_features_train_and_generate_with_the_trained_resampler(shared_data: Path, tmp_path: Path) -> None:
    """--local-features: 16 dense tokens per subject in training and inference, per image; the
    resampler trained on them is saved beside the LoRA and used for that relation's cases."""
    from relbench.runner import EvaluateOptions, evaluate
    from relbench.runstore import read_rows

    data = shared_data / "dreamrelation"
    with pytest.raises(RelbenchError, match="add --train-resampler"):
        train.parse_args(tiny_args(data, tmp_path / "x", "hug", "--local-features"))
    with pytest.raises(RelbenchError, match="--model dense_encoder=DIR"):
        train.parse_args([*tiny_args(data, tmp_path / "x", "hug", "--local-features", "--train-resampler"), "--profile", "full"])
    args = train.parse_args(tiny_args(data, tmp_path / "x", "hug", "--local-features", "--train-resampler"))
    setup = train.prepare(args, "cpu", "float32")
    assert setup.cache.image_embeds.shape[2] == 17 + 16  # global + local tokens per subject (tiny encoder)
    lora = train.main(tiny_args(data, tmp_path / "lora", "hug", "--local-features", "--train-resampler", "--max-train-steps", "2",
                                "--learning-rate", "1e-2"))
    assert (lora.parent / "image_proj.safetensors").is_file()
    config = json.loads((lora.parent / "training_config.json").read_text())
    assert config["local_features"] is True and len(config["image_proj_sha256"]) == 64
    summary = evaluate(EvaluateOptions(benchmark="demo", output=tmp_path / "run", methods=["dreamrelation"], relations=["hug"],
                                       metrics=["none"], progress=False,
                                       method_overrides={"dreamrelation": {"loras": f"hug={lora}", "local_features": "true"}}))
    assert summary.rows == 1
    (row,) = read_rows(tmp_path / "run" / "samples.jsonl")
    assert row["method_settings"]["local_features"] is True
    assert row["method_settings"]["lora_files"]["hug"]["image_proj"].endswith("image_proj.safetensors")
    with pytest.raises(RelbenchError, match="local"):  # a LoRA trained with local features, used without them
        evaluate(EvaluateOptions(benchmark="demo", output=tmp_path / "run2", methods=["dreamrelation"], relations=["hug"],
                                 metrics=["none"], progress=False, method_overrides={"dreamrelation": {"loras": f"hug={lora}"}}))


# --- augmentation defaults, SDXL time ids, LoRA alpha (audit of issue 9) ----------------------


def test_augmentation_defaults_are_the_reference_transform_and_flip_is_opt_in(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "dreamrelation"
    args = train.parse_args(tiny_args(data, tmp_path / "o", "hug"))
    assert (args.augment, args.flip, args.augment_variants) == ("reference", False, 8)
    motion, concept, variants = train.augmentation(args)
    assert (motion.fit, motion.crop_p, motion.random_offset, motion.hflip_p, variants) == ("letterbox", 0.5, True, 0.0, 8)
    assert (concept.fit, concept.crop_p, concept.random_offset, concept.hflip_p) == ("letterbox", 0.5, True, 0.0)
    flipped = train.parse_args(tiny_args(data, tmp_path / "o", "hug", "--flip"))
    motion, concept, _ = train.augmentation(flipped)
    assert flipped.flip and motion.hflip_p == 0.5 and concept.hflip_p == 0.0  # concept images are never mirrored
    plain = train.parse_args(tiny_args(data, tmp_path / "o", "hug", "--augment", "none"))
    motion, _, variants = train.augmentation(plain)
    assert (motion.crop_p, motion.random_offset, variants) == (0.0, False, 1)
    with pytest.raises(RelbenchError, match="--augment-variants: expected a positive integer"):
        train.parse_args(tiny_args(data, tmp_path / "o", "hug", "--augment-variants", "0"))


def test_sdxl_time_ids_are_the_original_size_crop_offset_and_resolution() -> None:
    from relbench.methods.dreamrelation.data import Placement

    # A 96 x 64 (w x h) image at 32 px: the reference crop is a 64 x 64 box; SDXL measures the
    # crop in the image resized to cover 32 x 32 (by 0.5), so a box at column 16 is left = 8.
    assert train.sdxl_time_ids((96, 64), Placement((16, 0, 80, 64), False, (32, 32)), 32) == [64, 96, 0, 8, 32, 32]
    # Mirrored, the cut on the left is what the box left on the right: 96 - 64 = 32 -> 16.
    assert train.sdxl_time_ids((96, 64), Placement((0, 0, 64, 64), True, (32, 32)), 32) == [64, 96, 0, 16, 32, 32]
    # The whole image letterboxed: nothing cut.
    assert train.sdxl_time_ids((96, 64), Placement((0, 0, 96, 64), False, (32, 32), (0, 5, 32, 27)), 32) == [64, 96, 0, 0, 32, 32]


def test_training_gives_the_unet_the_motion_images_time_ids_and_keeps_every_keypoint(tmp_path: Path) -> None:
    from test_dreamrelation_data import make_relation

    root = make_relation(tmp_path / "data", size=(96, 64))  # non-square motion image, keypoints near both sides
    args = train.parse_args(tiny_args(root, tmp_path / "o", "dance", "--augment", "none"))
    setup = train.prepare(args, "cpu", "float32")
    cache = setup.cache
    assert cache.variants == 1
    assert cache.time_ids.tolist() == [[[64.0, 96.0, 0.0, 0.0, 64.0, 64.0]]]  # was (64, 64, 0, 0, 64, 64)
    # The letterbox keeps the whole frame: every keypoint visible and inside (a square crop lost a third).
    assert bool(cache.rel_visibility.all()) and float(cache.rel_keypoints.min()) > 0 and float(cache.rel_keypoints.max()) < 1
    seen = []
    hook = setup.models.unet.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["added_cond_kwargs"]["time_ids"].clone()),
                                                       with_kwargs=True)
    try:
        with torch.no_grad():
            train.training_step(setup.models, setup.models.unet, setup.models.adapter.image_proj, cache, setup.weights,
                                setup.store, train.step_generator(0, 0, 0, torch.device("cpu")), args, setup.alphas_cumprod)
    finally:
        hook.remove()
    assert [t.tolist() for t in seen] == [[[64.0, 96.0, 0.0, 0.0, 64.0, 64.0]]]

    # The default: 8 cached draws per example, each with its own crop offset in the time ids.
    args = train.parse_args(tiny_args(root, tmp_path / "o", "dance"))
    cache = train.prepare(args, "cpu", "float32").cache
    motion, _, variants = train.augmentation(args)
    assert cache.variants == variants == 8
    for v in range(variants):
        placement = motion.sample((96, 64), train.variant_generator(args.seed, 0, v, 0))
        left = placement.box[0]  # a crop is a 64 x 64 box at a random column; the scale to 64 px is 1
        assert cache.time_ids[0, v].tolist() == [64.0, 96.0, 0.0, float(left), 64.0, 64.0]
    assert len({tuple(t.tolist()) for t in cache.time_ids[0]}) > 1


def _lora_delta(layer: torch.nn.Module) -> torch.Tensor:
    """What a peft LoRA layer adds to its base layer, as a (out, in) matrix: (layer - base)(I)^T."""
    eye = torch.eye(layer.base_layer.in_features)
    with torch.no_grad():
        return (layer(eye) - layer.base_layer(eye)).T


def test_lora_alpha_is_saved_and_diffusers_load_lora_weights_applies_it(tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    from relbench.methods.dreamrelation.lora import read_lora_config
    from relbench.tiny import tiny_sdxl_components

    unet = tiny_sdxl_components(0)["unet"]
    add_relation_lora(unet, rank=4, alpha=8.0, seed=0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_()
    path = save_relation_lora(unet, tmp_path / "lora")
    assert {k: v for k, v in read_lora_config(path).items() if k != "target_modules"} == {"r": 4, "lora_alpha": 8.0}
    state = read_lora_file(path)
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(0), add_watermarker=False)
    pipe.load_lora_weights(str(path), adapter_name="relation")
    names = [k[len("unet."):-len(".lora.down.weight")] for k in state if k.endswith(".lora.down.weight")]
    assert {n.rsplit("attn2.", 1)[1] for n in names} == {"to_q", "to_k", "to_v", "to_out.0"}
    for name in names:
        down, up = state[f"unet.{name}.lora.down.weight"], state[f"unet.{name}.lora.up.weight"]
        # alpha / rank = 2; without the metadata diffusers took alpha = rank and applied B @ A.
        torch.testing.assert_close(_lora_delta(pipe.unet.get_submodule(name)), 2.0 * up @ down, rtol=1e-5, atol=1e-6, msg=name)
    # Our own loader honours it too: the same file into an adapter of alpha 8 gives the same delta,
    # and into one of another alpha is refused instead of silently changing the strength.
    target = tiny_sdxl_components(0)["unet"]
    add_relation_lora(target, rank=4, alpha=8.0, seed=1)
    train._set_lora(target, state, path)
    name = names[0]
    torch.testing.assert_close(_lora_delta(target.get_submodule(name)), _lora_delta(pipe.unet.get_submodule(name)), rtol=1e-5, atol=1e-6)
    other = tiny_sdxl_components(0)["unet"]
    add_relation_lora(other, rank=4, alpha=4.0, seed=1)
    with pytest.raises(RelbenchError, match="LoRA of rank 4, alpha 8, but this run's adapter has rank 4, alpha 4"):
        train._set_lora(other, state, path)


# ------------------------------------------------------------------ inference: the fused relation LoRA

TWO_BOXES = ((0.0, 0.2, 0.55, 0.85), (0.55, 0.26, 0.95, 0.90))
THREE_BOXES = ((0.0, 0.2, 0.45, 0.85), (0.45, 0.2, 0.7, 0.85), (0.55, 0.25, 0.95, 0.9))


def random_lora(directory: Path, seed: int, alpha: float | None) -> Path:
    """A tiny-UNet relation LoRA with non-zero up weights; alpha None: a file without metadata (alpha = rank)."""
    from safetensors.torch import save_file

    from relbench.tiny import tiny_sdxl_components

    unet = tiny_sdxl_components(0)["unet"]
    add_relation_lora(unet, rank=4, alpha=alpha or 4.0, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    if alpha is None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in lora_state_dict(unet).items()}, str(directory / LORA_WEIGHT_NAME))
        return directory / LORA_WEIGHT_NAME
    return save_relation_lora(unet, directory)


def relation_request(relation: str, seed: int, subjects: int = 2):
    from PIL import Image

    from relbench.method import GenerationRequest, SubjectInput

    rng = np.random.default_rng(seed)
    boxes = TWO_BOXES if subjects == 2 else THREE_BOXES
    people = tuple(
        SubjectInput(f"s{i}", noun, (Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)),), box)
        for i, (noun, box) in enumerate(zip(("dog", "cat", "bear"), boxes))
    )
    return GenerationRequest(f"{relation}-{seed}", f"a dog is {relation}ging a cat", relation, people, seed, 32, 32, relation)


def dreamrelation(loras: str, lora_scale: float = 0.7):
    import dataclasses

    from relbench.methods.dreamrelation.method import DreamRelation
    from relbench.profiles import RunContext

    context = RunContext(profile="tiny")
    return DreamRelation(context, dataclasses.replace(DreamRelation.default_settings(context), loras=loras, lora_scale=lora_scale))


@pytest.fixture(scope="module")
def two_relations(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("loras")
    return dreamrelation(f"hug={random_lora(root / 'hug', 1, 8.0)},carry={random_lora(root / 'carry', 2, None)}")


def test_relation_lora_is_fused_once_per_relation_group_and_the_weights_restored_exactly(two_relations, monkeypatch) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    from relbench.methods.dreamrelation import lora

    method = two_relations
    unet = method.pipe.unet
    assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())  # no LoRA layer runs at the steps
    original = {k: v.clone() for k, v in unet.state_dict().items()}
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q"
    layer = unet.get_submodule(name)
    fused = []
    real = lora.fused_lora
    monkeypatch.setattr(lora, "fused_lora", lambda u, factors, scale: fused.append(scale) or real(u, factors, scale))
    seen = []  # the weight each UNet step ran with
    handle = unet.register_forward_pre_hook(lambda module, args: seen.append(layer.weight.detach().clone()))
    try:
        method.generate([relation_request("hug", 0), relation_request("carry", 1), relation_request("hug", 2)])
    finally:
        handle.remove()
    assert fused == [0.7, 0.7]  # two relation groups, one merge each
    assert len(seen) == 2 * 2  # 2 steps per group (each group one batch)
    for weights, relation, scaling in ((seen[:2], "hug", 8.0 / 4), (seen[2:], "carry", 1.0)):
        f = method.loras[relation][name]
        assert f.scaling == scaling  # metadata alpha 8 / rank 4; no metadata: alpha = rank
        expected = original[f"{name}.weight"] + 0.7 * scaling * f.up @ f.down
        for weight in weights:
            torch.testing.assert_close(weight, expected, rtol=1e-6, atol=1e-6)
    after = unet.state_dict()
    assert list(after) == list(original)
    assert all(torch.equal(after[k], original[k]) for k in original)  # bit for bit: the next group starts clean


@pytest.mark.parametrize("subjects", [2, 3])
def test_fused_lora_gives_the_images_of_the_unfused_per_step_path(tmp_path: Path, subjects: int) -> None:
    from relbench.methods.ms_diffusion.pipeline import generate_with_layout

    path = random_lora(tmp_path / "hug", 3, 8.0)
    method = dreamrelation(f"hug={path}", lora_scale=0.7)
    request = relation_request("hug", 5, subjects)
    kwargs = dict(
        prompts=[request.prompt], subject_images=[[s.images[0] for s in request.subjects]],
        phrases=[[s.class_noun for s in request.subjects]], boxes=[[s.box for s in request.subjects]], seeds=[5],
        num_inference_steps=2, guidance_scale=5.0, negative_prompt="lowres", width=32, height=32, scale=0.6, output_type="np",
    )
    models = method.models
    with method.relation_group("hug"):
        fused = generate_with_layout(method.pipe, models.adapter, models.encoder, **kwargs)[0]
    without = generate_with_layout(method.pipe, models.adapter, models.encoder, **kwargs)[0]
    # The path before: diffusers' LoRA layers at every step (alpha from the metadata, weight 0.7),
    # masks and image projections rebuilt at every step.
    method.pipe.load_lora_weights(str(path), adapter_name="relation")
    method.pipe.set_adapters(["relation"], adapter_weights=[0.7])
    unfused = generate_with_layout(method.pipe, models.adapter, models.encoder, precompute=False, **kwargs)[0]
    assert np.abs(fused - without).max() > 0.05  # the LoRA matters
    np.testing.assert_allclose(fused, unfused, rtol=0, atol=1e-5)


def test_two_relations_in_one_batch_give_the_images_of_separate_calls(two_relations) -> None:
    method = two_relations
    hug, carry = [relation_request("hug", 0), relation_request("hug", 1)], [relation_request("carry", 0), relation_request("carry", 1)]
    together = method.generate([hug[0], carry[0], hug[1], carry[1]])
    apart = method.generate(carry) + method.generate(hug)
    pixels = [np.asarray(image, dtype=int) for image in together]
    expected = [np.asarray(image, dtype=int) for image in (apart[2], apart[0], apart[3], apart[1])]
    assert all(np.array_equal(a, b) for a, b in zip(pixels, expected))
    assert np.abs(pixels[0] - pixels[1]).max() > 5  # same seed and subjects, another relation's LoRA


def test_relation_lora_reader_refuses_what_it_cannot_merge(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from relbench.methods.dreamrelation.lora import read_relation_lora
    from relbench.tiny import tiny_sdxl_components

    unet = tiny_sdxl_components(0)["unet"]
    state = load_file(str(random_lora(tmp_path / "good", 1, None)))
    up = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora.up.weight"
    cases = {
        "text": ({**state, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight": torch.zeros(4, 32)},
                 "not a UNet LoRA factor"),
        "half": ({k: v for k, v in state.items() if k != up}, "attn2.to_k has no up weight"),
    }
    for name, (tensors, message) in cases.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(RelbenchError, match=message):
            read_relation_lora(tmp_path / f"{name}.safetensors", unet)
    save_file(state, str(tmp_path / "dora.safetensors"), {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 4, "unet.use_dora": True})})
    with pytest.raises(RelbenchError, match="sets use_dora"):
        read_relation_lora(tmp_path / "dora.safetensors", unet)
