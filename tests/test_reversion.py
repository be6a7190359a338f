"""ReVersion: the steering loss and timestep sampling against hand-computed values, exemplar
folders, training that saves a loadable token which changes generation, exact resume, the trained
cache, and the method's refusals, in the tiny profile."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relbench.benchmark import Benchmark, ReferencePose, Relation, RelationKind
from relbench.errors import RelbenchError
from relbench.method import GenerationRequest, SubjectInput
from relbench.methods.reversion import train
from relbench.methods.reversion.data import (
    entity_descriptions, exemplars_digest, read_exemplar_folder, reference_pose_exemplars,
)
from relbench.methods.reversion.embeds import EMBEDS_NAME, read_learned_embeds
from relbench.methods.reversion.losses import (
    RELATION_WORDS, excluded_token_ids, importance_probabilities, negative_mask, steer_loss,
)
from relbench.profiles import RunContext


def _photo(name: str, size: int = 48) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB").resize((size, size))


def write_folder(folder: Path, entries: dict[str, tuple[str, list[str]]]) -> Path:
    """A ReVersion exemplar folder: {file name: (skimage photo, descriptions)}."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (photo, _) in entries.items():
        _photo(photo).save(folder / name)
    (folder / "text.json").write_text(json.dumps({name: texts for name, (_, texts) in entries.items()}))
    return folder


@pytest.fixture
def exemplars(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "exemplars" / "hug", {
        "0.png": ("astronaut", ["astronaut {} rocket", "an astronaut {} a rocket"]),
        "1.png": ("chelsea", ["cat {} sofa"]),
    })


def tiny_args(exemplars: Path, output: Path, *extra: str) -> list[str]:
    return ["--exemplars", str(exemplars), "--output", str(output), "--profile", "tiny", "--device", "cpu",
            "--gradient-accumulation-steps", "1", "--quiet", *extra]


def request(relation: str | None = "hug", seed: int = 0, nouns: tuple[str, ...] = ("astronaut", "cat"), size: int = 64) -> GenerationRequest:
    subjects = tuple(SubjectInput(f"s{i}", noun, (_photo("astronaut", 16),), (0.0, 0.0, 1.0, 1.0)) for i, noun in enumerate(nouns))
    return GenerationRequest(f"case-{relation}", "an astronaut hugging a cat", "hugging", subjects, seed, size, size, relation)


# ------------------------------------------------------------------------------------------
# Losses


def test_steer_loss_matches_a_hand_computed_value() -> None:
    relation = torch.tensor([2.0, 0.0], requires_grad=True)  # cosine ignores the norm
    positives = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # cos = 1, 0
    negatives = torch.tensor([[-1.0, 0.0], [1.0, 1.0]])  # cos = -1, 1/sqrt(2)
    tau = 0.5
    logits = [1 / tau, 0.0, -1 / tau, (1 / math.sqrt(2)) / tau]
    expected = math.log(sum(math.exp(v) for v in logits)) - math.log(math.exp(logits[0]) + math.exp(logits[1]))
    loss = steer_loss(relation, positives, negatives, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # By hand: log(e^2 + e^0 + e^-2 + e^1.4142) - log(e^2 + e^0) = log(12.638) - log(8.389)
    assert loss.item() == pytest.approx(0.4098, abs=1e-4)
    loss.backward()
    assert relation.grad is not None and float(relation.grad.abs().sum()) > 0


def test_steer_loss_trains_only_the_relation_and_is_zero_without_negatives() -> None:
    relation = torch.tensor([0.3, -0.2, 0.9], requires_grad=True)
    positives = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    negatives = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    steer_loss(relation, positives, negatives, 0.07).backward()
    assert positives.grad is None and negatives.grad is None  # targets, not trained
    assert steer_loss(relation, positives, torch.zeros(0, 3), 0.07).item() == pytest.approx(0.0, abs=1e-6)
    # Moving <R> towards the positives lowers the loss.
    closer = positives.detach().mean(0)
    assert float(steer_loss(closer, positives, negatives, 0.07)) < float(steer_loss(-closer, positives, negatives, 0.07))


def test_negatives_are_the_entity_words_of_a_description() -> None:
    import copy

    from relbench.tiny import clip_tokenizer

    tokenizer = copy.deepcopy(clip_tokenizer())
    tokenizer.add_tokens("<R>")
    placeholder = tokenizer.convert_tokens_to_ids("<R>")
    ids = tokenizer(["an astronaut <R> a rocket on the moon"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    mask = negative_mask(ids, torch.tensor(excluded_token_ids(tokenizer, placeholder)))
    words = tokenizer.convert_ids_to_tokens(ids[mask].tolist())
    assert words == ["astronaut</w>", "rocket</w>", "moon</w>"]  # stop words, "on", <R>, BOS/EOS/padding excluded


def test_importance_sampling_favours_the_noisy_timesteps() -> None:
    probs = importance_probabilities(1000, 0.5)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    # f(t) = (1 - 0.5 cos(pi t / 1000)) / 1000, normalised: f(0) : f(500) : f(999) = 0.5 : 1 : ~1.5
    norm = sum(1 - 0.5 * math.cos(math.pi * t / 1000) for t in range(1000))
    assert float(probs[0]) == pytest.approx(0.5 / norm, rel=1e-9)
    assert float(probs[500]) == pytest.approx(1.0 / norm, rel=1e-9)
    assert float(probs[999] / probs[0]) == pytest.approx((1 - 0.5 * math.cos(math.pi * 0.999)) / 0.5, rel=1e-9)
    assert torch.allclose(importance_probabilities(10, 0.0), torch.full((10,), 0.1, dtype=torch.float64))
    with pytest.raises(ValueError):
        importance_probabilities(1000, 1.0)


# ------------------------------------------------------------------------------------------
# Exemplars and arguments


def test_reversion_folder_reads_images_and_descriptions(exemplars: Path) -> None:
    found = read_exemplar_folder(exemplars)
    assert [Path(e.source).name for e in found] == ["0.png", "1.png"]
    assert found[0].descriptions == ("astronaut {} rocket", "an astronaut {} a rocket")
    assert found[1].image.size == (48, 48) and found[1].image.mode == "RGB"
    digest = exemplars_digest(found)
    (exemplars / "text.json").write_text(json.dumps({"0.png": ["astronaut {} moon"], "1.png": ["cat {} sofa"]}))
    assert exemplars_digest(read_exemplar_folder(exemplars)) != digest  # descriptions are part of the identity
    assert entity_descriptions(["owl", "polar bear"], "x") == ("owl {} polar bear", "an owl {} a polar bear")


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "text.json").unlink(), "not an exemplar folder: expected images with ReVersion's text.json"),
    (lambda f: (f / "text.json").write_text(json.dumps({"0.png": ["astronaut {} rocket"]})), r"text.json: no descriptions for image '1.png'"),
    (lambda f: (f / "text.json").write_text(json.dumps({"0.png": ["astronaut rocket"], "1.png": ["a {} b"]})), r"0.png: expected a description with exactly one '\{\}'"),
    (lambda f: (f / "text.json").write_text("{oops"), r"text.json: cannot read JSON"),
    (lambda f: (f / "1.png").write_bytes(b"not an image"), None),  # caught when the images load, not by parse_args
])
def test_bad_exemplar_folders_are_refused_before_any_model_loads(exemplars: Path, tmp_path: Path, breakage, message) -> None:
    breakage(exemplars)
    if message is None:
        train.parse_args(tiny_args(exemplars, tmp_path / "o"))  # layout is fine
        with pytest.raises(RelbenchError, match=r"1.png: cannot read exemplar image"):
            read_exemplar_folder(exemplars)
        return
    with pytest.raises(RelbenchError, match=message):
        train.parse_args(tiny_args(exemplars, tmp_path / "o"))


@pytest.mark.parametrize("extra, message", [
    (["--max-train-steps", "0"], "--max-train-steps: expected a positive integer"),
    (["--temperature", "0"], "--temperature: expected a number > 0"),
    (["--scaled-cosine-alpha", "1"], r"--scaled-cosine-alpha: expected a number in \[0, 1\)"),
    (["--num-positives", str(len(RELATION_WORDS) + 1)], "--num-positives: expected 1..56"),
    (["--resolution", "60"], "--resolution: expected a multiple of 8"),
    (["--resolution", "4096"], None),  # the bound itself is accepted (checked below)
    (["--resolution", "4104"], "--resolution: expected a multiple of 8 from 16 to 4096, got 4104"),
    (["--placeholder-token", "a b"], "--placeholder-token: expected one word"),
    (["--resume-from-checkpoint", "/nonexistent/checkpoint-3"], "no such checkpoint folder"),
    (["--denoise-loss-weight", "0", "--steer-loss-weight", "0"], "nothing to train"),
])
def test_arguments_are_validated_before_any_work(exemplars: Path, tmp_path: Path, extra: list[str], message: str | None) -> None:
    if message is None:
        assert train.parse_args(tiny_args(exemplars, tmp_path / "o", *extra)).resolution == 4096
        return
    with pytest.raises(RelbenchError, match=message):
        train.parse_args(tiny_args(exemplars, tmp_path / "o", *extra))


def test_missing_exemplar_folder_and_multi_token_initializer(exemplars: Path, tmp_path: Path) -> None:
    with pytest.raises(RelbenchError, match="nothing: exemplar folder not found"):
        train.parse_args(tiny_args(tmp_path / "nothing", tmp_path / "o"))
    args = train.parse_args(tiny_args(exemplars, tmp_path / "o"))
    assert (args.relation, args.resolution, args.seed, args.learning_rate) == ("hug", 64, 2023, 2.5e-4)
    with pytest.raises(RelbenchError, match="--initializer-token: 'hyperrealistically' is .* tokens; expected a single-token word"):
        train.main(tiny_args(exemplars, tmp_path / "o", "--initializer-token", "hyperrealistically"))


def test_dreamrelation_folders_and_reference_poses_give_exemplars(shared_data: Path) -> None:
    found = read_exemplar_folder(shared_data / "dreamrelation" / "hug")
    assert len(found) == 5
    assert found[0].descriptions == ("lion {} polar bear", "a lion {} a polar bear")
    assert found[0].source.endswith("hug/videos/0/motion.png")
    relation = Relation("hug", "hugging", RelationKind.INTERACTION, (("animal",), ("animal",)), tuple(
        ReferencePose(f"dreamrelation/hug/videos/{i}/motion_keyposes.pth", "ap10k", f"dreamrelation/hug/videos/{i}/motion.png")
        for i in (2, 3)
    ))
    poses = reference_pose_exemplars(relation, shared_data, None)
    assert [e.descriptions[0] for e in poses] == ["bear {} tiger", "kangaroo {} chimpanzee"]
    assert np.array_equal(np.asarray(poses[0].image), np.asarray(found[2].image))


def test_reference_pose_without_description_is_refused(tmp_path: Path) -> None:
    _photo("astronaut").save(tmp_path / "pose.png")
    relation = Relation("hug", "hugging", RelationKind.INTERACTION, (("a",), ("a",)), (ReferencePose("k.pth", "coco", str(tmp_path / "pose.png")),))
    with pytest.raises(RelbenchError, match=r"pose.png: relations\[hug\].reference_poses\[0\].image: no coarse description"):
        reference_pose_exemplars(relation, tmp_path, None)


# ------------------------------------------------------------------------------------------
# Training


def _tiny_pipe():
    from relbench.methods.reversion.models import load_sd15
    from relbench.profiles import ModelRef

    return load_sd15(ModelRef("sd15", "tiny:sd15"))[0]


def _sample(pipe, prompt: str) -> np.ndarray:
    out = pipe(prompt=[prompt], num_inference_steps=2, guidance_scale=7.5, width=64, height=64,
               generator=[torch.Generator().manual_seed(0)], output_type="np")
    return out.images[0]


def test_two_training_steps_save_an_embedding_that_loads_back_and_changes_generation(exemplars: Path, tmp_path: Path) -> None:
    path = train.main(tiny_args(exemplars, tmp_path / "out", "--max-train-steps", "2", "--learning-rate", "0.05", "--no-scale-lr"))
    assert path == tmp_path / "out" / EMBEDS_NAME
    token, vector = read_learned_embeds(path)
    assert token == "<R>" and vector.shape == (32,)

    trained = _tiny_pipe()
    trained.load_textual_inversion(str(path))  # diffusers' own loader reads the file
    row = trained.text_encoder.get_input_embeddings().weight[trained.tokenizer.convert_tokens_to_ids("<R>")]
    assert torch.equal(row.detach(), vector)
    untrained = _tiny_pipe()
    and_id = untrained.tokenizer("and", add_special_tokens=False).input_ids[0]  # "and</w>", the initializer
    initial = untrained.text_encoder.get_input_embeddings().weight[and_id].detach().clone()
    assert float((vector - initial).abs().max()) > 0.02  # two Adam steps at lr 0.05 moved it
    untrained.load_textual_inversion({"<R>": initial})
    a, b = _sample(trained, "astronaut <R> rocket"), _sample(untrained, "astronaut <R> rocket")
    assert np.abs(a - b).mean() > 1e-3  # the learned token changes the image
    assert np.abs(_sample(untrained, "astronaut and rocket") - b).max() < 1e-5  # untrained <R> is exactly "and"
    config = json.loads((tmp_path / "out" / "training_config.json").read_text())
    assert config["models"]["sd15"]["id"] == "tiny:sd15" and config["effective_learning_rate"] == 0.05


def test_embedding_files_in_both_formats_and_broken_ones(tmp_path: Path) -> None:
    from relbench.methods.reversion.embeds import save_learned_embeds

    vector = torch.arange(4, dtype=torch.float32)
    path = save_learned_embeds(vector, "<R>", tmp_path)
    token, loaded = read_learned_embeds(path)
    assert token == "<R>" and torch.equal(loaded, vector)
    torch.save({"<R>": vector * 2}, tmp_path / "learned_embeds.bin")  # ReVersion's released format: (D,)
    assert torch.equal(read_learned_embeds(tmp_path / "learned_embeds.bin")[1], vector * 2)
    (tmp_path / "broken.safetensors").write_bytes(path.read_bytes()[:20])
    with pytest.raises(RelbenchError, match="broken.safetensors: not a readable embedding file"):
        read_learned_embeds(tmp_path / "broken.safetensors")
    torch.save({"<R>": vector, "<S>": vector}, tmp_path / "two.bin")
    with pytest.raises(RelbenchError, match=r"two.bin: expected exactly one embedding"):
        read_learned_embeds(tmp_path / "two.bin")


def test_scale_lr_multiplies_by_batch_accumulation_and_processes(exemplars: Path, tmp_path: Path) -> None:
    train.main(tiny_args(exemplars, tmp_path / "out", "--max-train-steps", "1", "--train-batch-size", "2",
                         "--gradient-accumulation-steps", "3"))
    config = json.loads((tmp_path / "out" / "training_config.json").read_text())
    assert config["effective_learning_rate"] == pytest.approx(2.5e-4 * 2 * 3 * 1)


def test_resuming_from_a_checkpoint_continues_exactly(exemplars: Path, tmp_path: Path) -> None:
    whole = train.main(tiny_args(exemplars, tmp_path / "whole", "--max-train-steps", "4", "--checkpointing-steps", "2"))
    split = tmp_path / "split"
    train.main(tiny_args(exemplars, split, "--max-train-steps", "2", "--checkpointing-steps", "2"))
    assert (split / "checkpoint-2" / EMBEDS_NAME).is_file()
    resumed = train.main(tiny_args(exemplars, split, "--max-train-steps", "4", "--checkpointing-steps", "2",
                                   "--resume-from-checkpoint", "latest"))
    torch.testing.assert_close(read_learned_embeds(whole)[1], read_learned_embeds(resumed)[1], rtol=0, atol=1e-7)
    assert json.loads((split / "checkpoint-4" / "trainer_state.json").read_text()) == {"global_step": 4}
    assert not torch.equal(read_learned_embeds(split / "checkpoint-2" / EMBEDS_NAME)[1], read_learned_embeds(resumed)[1])


def test_a_training_folder_is_readable_by_colleagues(exemplars: Path, tmp_path: Path) -> None:
    """Under umask 022 every file a training writes is 0644 (the embedding was 0600 through mkstemp),
    and no temporary file is left behind."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        train.main(tiny_args(exemplars, tmp_path / "out", "--max-train-steps", "1", "--checkpointing-steps", "1"))
    finally:
        os.umask(old)
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert {EMBEDS_NAME, "training_config.json", f"checkpoint-1/{EMBEDS_NAME}", "checkpoint-1/trainer_state.json"} <= set(files)
    assert {f: stat.S_IMODE((tmp_path / "out" / f).stat().st_mode) for f in files} == {f: 0o644 for f in files}
    assert not any(Path(f).name.startswith(".") for f in files)


def test_training_step_randomness_depends_on_the_step_only(exemplars: Path, tmp_path: Path) -> None:
    args = train.parse_args(tiny_args(exemplars, tmp_path / "o"))
    setup = train.prepare(args, "cpu", "float32")

    def loss_at(step: int) -> float:
        choices, noise = train.step_generators(args.seed, step, 0, torch.device("cpu"))
        with torch.no_grad():
            return float(train.training_step(setup, setup.text_encoder, args, choices, noise)[0])

    assert loss_at(3) == loss_at(3) and loss_at(3) != loss_at(4)


# ------------------------------------------------------------------------------------------
# The method


def reversion(exemplars: str = "", **overrides: str):
    from relbench.methods.reversion.method import ReVersion

    context = RunContext(profile="tiny")
    settings = ReVersion.settings_from_overrides(context, {"exemplars": exemplars, **overrides} if exemplars else overrides)
    return ReVersion(context, settings)


def test_method_trains_once_then_reuses_the_cache(exemplars: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELBENCH_TRAINED_CACHE", str(tmp_path / "cache"))
    root = str(exemplars.parent)  # DIR/<relation>/
    first = reversion(root).generate([request("hug", seed=1)])[0]
    done = list((tmp_path / "cache" / "reversion").glob("*/*/complete.json"))
    assert len(done) == 1
    info = json.loads(done[0].read_text())
    assert info["relation"] == "hug" and info["images"] == 2 and info["source"] == str(exemplars)
    assert (done[0].parent / "exemplars" / "text.json").is_file() and (done[0].parent / EMBEDS_NAME).is_file()

    def no_training(argv):
        raise AssertionError("trained again although the cache has the token")

    with monkeypatch.context() as patch:
        patch.setattr(train, "main", no_training)
        method = reversion(root)
        again = method.generate([request("hug", seed=1)])[0]
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert method.settings()["relation_tokens"]["hug"]["exemplars_sha256"] == info["exemplars_sha256"]

    # New exemplars are a new key: trained again, into a second folder.
    (exemplars / "text.json").write_text(json.dumps({"0.png": ["astronaut {} moon"], "1.png": ["cat {} sofa"]}))
    reversion(root).generate([request("hug", seed=1)])
    assert len(list((tmp_path / "cache" / "reversion").glob("*/*/complete.json"))) == 2


def test_relation_without_exemplars_is_a_clear_error(exemplars: Path) -> None:
    from relbench.benchmarks import load_benchmark
    from relbench.methods.reversion.method import ReVersion

    demo = load_benchmark("demo")
    context = RunContext(profile="tiny")
    with pytest.raises(RelbenchError, match=r"reversion: no exemplar images for relation\(s\) hug, carry: pass --set reversion.exemplars=DIR"):
        ReVersion.check_cases(ReVersion.default_settings(context), demo, demo.cases[:2])
    settings = ReVersion.settings_from_overrides(context, {"exemplars": str(exemplars.parent)})
    with pytest.raises(RelbenchError, match=r"relation\(s\) carry:"):
        ReVersion.check_cases(settings, demo, demo.cases[:2])
    ReVersion.check_cases(settings, demo, demo.cases[:1])  # hug has a folder: fine
    with pytest.raises(RelbenchError, match="exemplars: /nowhere: folder not found"):
        ReVersion.check_cases(ReVersion.settings_from_overrides(context, {"exemplars": "/nowhere"}), demo, demo.cases[:1])
    with pytest.raises(RelbenchError, match=r"reversion: no exemplar images for relation 'carry'"):
        reversion(str(exemplars.parent)).generate([request("carry")])


def test_subject_counts_relation_id_and_prompt_template_are_checked(exemplars: Path) -> None:
    method = reversion(str(exemplars.parent))
    with pytest.raises(RelbenchError, match="supports 2 to 2 subjects, got 3"):
        method.generate([request(nouns=("a", "b", "c"))])
    with pytest.raises(RelbenchError, match="supports 2 to 2 subjects, got 1"):
        method.generate([request(nouns=("a",))])
    with pytest.raises(RelbenchError, match="needs the relation id"):
        method.generate([request(relation=None)])
    with pytest.raises(RelbenchError, match=r"prompt_template: expected \{0\}, \{1\} and one <R>"):
        reversion(str(exemplars.parent), prompt_template="{0} hugs {1}")


def test_prompt_puts_the_relation_token_between_the_nouns(exemplars: Path) -> None:
    method = reversion(str(exemplars.parent), prompt_template="a {0} <R> a {1}")
    prompt = method.prompt(request(nouns=("dog", "stuffed animal")))
    assert prompt == "a dog <R_hug> a stuffed animal"
    ids = method.pipe.tokenizer(prompt).input_ids
    assert method.pipe.tokenizer.convert_tokens_to_ids("<R_hug>") in ids
    assert ids.count(method.pipe.tokenizer.convert_tokens_to_ids("<R_hug>")) == 1


def test_tiny_generation_from_benchmark_reference_poses(tmp_path: Path) -> None:
    """Exemplars from a benchmark relation's reference pose images (text.json beside them), handed
    over by the runner through use_benchmark; images of the requested size, deterministic per seed."""
    poses = write_folder(tmp_path / "poses", {"p0.png": ("astronaut", ["astronaut {} rocket"]), "p1.png": ("coffee", ["cup {} table"])})
    relation = Relation("hug", "hugging", RelationKind.INTERACTION, (("a",), ("a",)),
                        tuple(ReferencePose("k.pth", "coco", f"./poses/p{i}.png") for i in (0, 1)))
    bench = Benchmark("mine", "1", "", {}, {"hug": relation}, (), spec_path=tmp_path / "spec.yaml")
    method = reversion()
    with pytest.raises(RelbenchError, match="no exemplar images for relation 'hug'"):
        method.generate([request("hug")])  # the benchmark was not handed over yet
    method.use_benchmark(bench, tmp_path / "data-root")
    images = method.generate([request("hug", seed=0), request("hug", seed=1)])
    assert [im.size for im in images] == [(64, 64), (64, 64)] and all(im.mode == "RGB" for im in images)
    assert np.asarray(images[0]).std() > 1.0
    assert np.abs(np.asarray(images[0], dtype=int) - np.asarray(images[1], dtype=int)).mean() > 1  # seeds differ
    alone = method.generate([request("hug", seed=1)])[0]
    assert np.abs(np.asarray(alone, dtype=int) - np.asarray(images[1], dtype=int)).max() <= 2  # batch-independent
    settings = method.settings()
    assert settings["method"] == "reversion" and settings["scheduler"] == "PNDMScheduler"
    assert settings["relation_tokens"]["hug"]["source"] == "mine v1: relations[hug].reference_poses"
    assert (settings["num_inference_steps"], settings["guidance_scale"], settings["max_train_steps"]) == (2, 7.5, 2)


def test_generation_size_resizes_to_the_requested_size(exemplars: Path) -> None:
    method = reversion(str(exemplars.parent), generation_size="32")
    assert method._generation_size(64, 64) == (32, 32) and method._generation_size(128, 64) == (32, 16)
    assert method.generate([request("hug", size=64)])[0].size == (64, 64)


def test_full_defaults_are_the_authors_recipe() -> None:
    from relbench.methods.reversion.method import ReVersion, ReVersionSettings

    full = ReVersionSettings()
    assert (full.num_inference_steps, full.guidance_scale, full.generation_size, full.negative_prompt) == (50, 7.5, 512, "")
    assert (full.max_train_steps, full.learning_rate, full.scale_lr, full.train_batch_size, full.gradient_accumulation_steps) == (3000, 2.5e-4, True, 2, 4)
    assert (full.steer_loss_weight, full.num_positives, full.temperature, full.scaled_cosine_alpha) == (0.01, 4, 0.07, 0.5)
    assert (full.initializer_token, full.train_seed, full.train_resolution, full.importance_sampling) == ("and", 2023, 512, True)
    assert ReVersion.default_settings(RunContext(profile="full", device="cpu")).dtype == "float32"


def test_settings_fingerprint_follows_the_exemplar_files(exemplars: Path) -> None:
    from relbench.methods.reversion.method import ReVersion

    context = RunContext(profile="tiny")
    settings = ReVersion.settings_from_overrides(context, {"exemplars": f"hug={exemplars}"})
    before = ReVersion.settings_fingerprint(settings)
    _photo("coffee").save(exemplars / "1.png")
    after = ReVersion.settings_fingerprint(settings)
    assert before["exemplar_folders_sha256"]["hug"] != after["exemplar_folders_sha256"]["hug"]
    assert ReVersion.settings_fingerprint(ReVersion.default_settings(context)) == {}


def test_full_profile_loads_a_local_pipeline_folder(exemplars: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full profile's loading code (training and generation), on a pipeline saved from the tiny one."""
    from relbench.methods.reversion.method import ReVersion

    monkeypatch.setenv("RELBENCH_TRAINED_CACHE", str(tmp_path / "cache"))
    _tiny_pipe().save_pretrained(tmp_path / "sd15")
    context = RunContext(profile="full", device="cpu", model_overrides={"sd15": str(tmp_path / "sd15")})
    settings = ReVersion.settings_from_overrides(context, {
        "exemplars": str(exemplars.parent), "num_inference_steps": "2", "generation_size": "0", "max_train_steps": "1",
        "gradient_accumulation_steps": "1", "train_resolution": "64",
    })
    method = ReVersion(context, settings)
    image = method.generate([request("hug")])[0]
    assert image.size == (64, 64)
    assert method.settings()["model"]["id"] == str(tmp_path / "sd15")
    config = json.loads(next((tmp_path / "cache").rglob("training_config.json")).read_text())
    assert config["profile"] == "full" and config["models"]["sd15"]["id"] == str(tmp_path / "sd15")
    missing = RunContext(profile="full", device="cpu", model_overrides={"sd15": str(tmp_path / "nothing")})
    with pytest.raises(RelbenchError, match=r"cannot load Stable Diffusion 1.5 from .*--model sd15=/local/path"):
        ReVersion(missing, settings)


@pytest.mark.slow
def test_two_process_training_under_accelerate(exemplars: Path, tmp_path: Path) -> None:
    """The entry under `accelerate launch` with 2 CPU processes (gradients averaged by DDP)."""
    import os
    import subprocess
    import sys

    accelerate = Path(sys.executable).parent / "accelerate"
    run = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "relbench.methods.reversion.train",
                          *tiny_args(exemplars, tmp_path / "two", "--max-train-steps", "2", "--checkpointing-steps", "1")],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "two" / "checkpoint-1" / "random_states_1.pkl").is_file()  # two processes ran
    config = json.loads((tmp_path / "two" / "training_config.json").read_text())
    assert config["processes"] == 2 and config["effective_learning_rate"] == pytest.approx(2.5e-4 * 2 * 2)
    assert read_learned_embeds(tmp_path / "two" / EMBEDS_NAME)[1].shape == (32,)
    bad = subprocess.run([sys.executable, "-m", "relbench.methods.reversion.train", "--exemplars", str(tmp_path / "none")],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
