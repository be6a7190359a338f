"""The full profile rehearsed end to end: every pretrained model loaded by its default hub id through
the real code path (from_pretrained / hf_hub_download, subfolders, variants, shards, tokenizers,
processors) from a hub-layout cache of tiny random models (tests/rehearsal.py), offline.

Nothing is overridden with --model; --set only shortens the work (steps, training resolution) so
that the whole rehearsal fits a CPU test run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rehearsal import DECOYS, SAME_REPO, build_cache, fake_commit, files_to_hold, rehearsal_cache, repo_folder
from relbench.models_manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
MANIFEST = load_manifest()
SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"


@pytest.fixture(scope="module")
def hub() -> tuple[Path, dict[str, str]]:
    return rehearsal_cache(MANIFEST)


def relbench(*args: str, cache: Path, extra_env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-4000:])
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_the_cache_holds_exactly_the_files_the_loaders_read_plus_decoys(hub: tuple[Path, dict[str, str]]) -> None:
    cache, commits = hub
    by_repo: dict[str, set[str]] = {}
    for key, entry in MANIFEST.models.items():
        owner = SAME_REPO.get(key, key)
        by_repo.setdefault(entry.repo, set()).update(files_to_hold(entry), DECOYS.get(owner, ()))
        assert commits[key] == fake_commit(entry)
        folder = repo_folder(cache, entry.repo)
        assert (folder / "refs" / "main").read_text() == commits[key]
    for repo, expected in by_repo.items():
        snapshot = next((repo_folder(cache, repo) / "snapshots").iterdir())
        held = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
        assert held == expected, repo
    sdxl = {p.relative_to(cache).as_posix() for p in (repo_folder(cache, SDXL_REPO)).rglob("unet/*")}
    assert sorted(s.rsplit("/", 1)[1] for s in sdxl) == [
        "config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"]
    checked = relbench("models", "check", "--method", "all", "--metrics", "all", "--train", "dreamrelation,reversion",
                       "--key", "dense_encoder", cache=cache)
    assert checked.returncode == 0, checked.stderr
    # 84 files of evaluate --method all --metrics all on GPU, + SDXL's 4 full-precision weight files
    # the trainer reads, + the dense encoder's 4 (the bigG repo, as a CLIPVisionModel)
    assert checked.stdout.strip() == f"{cache}: all 92 files of 12 models are cached"


@pytest.mark.slow
def test_full_profile_train_then_evaluate_every_method_and_metric(hub: tuple[Path, dict[str, str]], shared_data: Path,
                                                                  tmp_path: Path) -> None:
    cache, commits = hub
    trained = relbench(
        "train", "dreamrelation", "--profile", "full", "--device", "cpu", "--data-root", str(shared_data / "dreamrelation"),
        "--relation", "hug", "--output", str(tmp_path / "lora"), "--max-train-steps", "2", "--gradient-accumulation-steps", "1",
        "--resolution", "64", "--augment-variants", "1", "--quiet", cache=cache,
    )
    assert trained.returncode == 0, trained.stderr[-4000:]
    lora = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    assert lora.is_file()

    exemplars = tmp_path / "exemplars" / "hug"
    exemplars.mkdir(parents=True)
    from PIL import Image
    from skimage import data

    for name, photo in (("0.png", data.astronaut()), ("1.png", data.chelsea())):
        Image.fromarray(photo).resize((64, 64)).save(exemplars / name)
    (exemplars / "text.json").write_text(json.dumps({"0.png": ["astronaut {} rocket"], "1.png": ["cat {} sofa"]}))

    fast = [f"{m}.num_inference_steps=2" for m in ("sdxl", "ms-diffusion", "dreamrelation", "ip-adapter", "omnigen",
                                                   "reversion", "dreambooth-lora", "custom-diffusion")]
    for method in ("dreambooth-lora", "custom-diffusion"):  # first-use training: one step per subject at 64 px
        fast += [f"{method}.max_train_steps_per_subject=1", f"{method}.resolution=64",
                 f"{method}.gradient_accumulation_steps=1", f"{method}.mixed_precision=no"]
    fast += ["reversion.max_train_steps=1", "reversion.train_resolution=64", "reversion.gradient_accumulation_steps=1",
             "reversion.generation_size=64", f"reversion.exemplars={tmp_path / 'exemplars'}", "omnigen.max_input_image_size=64",
             "sdxl.variant=fp16"]  # the GPU default's fp16 files, read on the CPU (the others read the full-precision ones)
    run = tmp_path / "run"
    result = relbench("evaluate", "--profile", "full", "--device", "cpu", "--method", "all", "--metrics", "all",
                      "--resolution", "64", "--relations", "hug", "--output", str(run), "--quiet", "--lora", f"hug={lora}",
                      *[part for value in fast for part in ("--set", value)], cache=cache)
    assert result.returncode == 0, result.stderr[-6000:]

    from relbench.metrics import METRICS
    from relbench.runstore import read_rows

    rows = read_rows(run / "samples.jsonl")
    expected_methods = {name for name in MANIFEST.methods if name != "folder"}  # folder needs --set folder.path
    assert {row["method"] for row in rows} == expected_methods
    for row in rows:
        assert set(row["metrics"]) == set(METRICS.names()), row["method"]
    record = json.loads((run / "run.json").read_text())
    hub_models = record["environment"]["hub_models"]
    defaults = {key for key, entry in MANIFEST.models.items() if entry.default}
    assert set(hub_models) == defaults
    assert {key: value["commit"] for key, value in hub_models.items()} == {key: commits[key] for key in defaults}
    assert hub_models["sdxl"]["repo"] == SDXL_REPO and hub_models["sdxl"]["revision"] == "main"
    for settings in record["method_settings"].values():  # each method's settings record the commit of every model it read
        for key in MANIFEST.methods[settings["method"]]:
            assert commits[key] in json.dumps(settings), (settings["method"], key)
    for name in record["metrics"]:
        model = record["metrics"][name].get("settings", {})
        text = json.dumps(model)
        key = MANIFEST.metrics[name][0]
        assert commits[key] in text, name  # each metric's settings record the commit it loaded


def partial_cache(hub: Path, target: Path, repo: str, remove: str) -> Path:
    """The rehearsal cache with one file of one repo missing (the other repos linked)."""
    target.mkdir()
    for folder in hub.iterdir():
        if folder.name == repo_folder(hub, repo).name:
            shutil.copytree(folder, target / folder.name)
            snapshot = next((target / folder.name / "snapshots").iterdir())
            (snapshot / remove).unlink()
        else:
            (target / folder.name).symlink_to(folder)
    return target


def test_a_missing_sdxl_file_is_one_line_naming_key_repo_file_and_command(hub: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    cache = partial_cache(hub[0], tmp_path / "hub", SDXL_REPO, "unet/diffusion_pytorch_model.safetensors")
    cause = f"sdxl ({SDXL_REPO}@main): unet/diffusion_pytorch_model.safetensors"
    command = "`relbench models download --key sdxl --variant none`"  # the CPU default reads the full-precision files

    evaluated = relbench("evaluate", "--profile", "full", "--device", "cpu", "--method", "sdxl", "--metrics", "none",
                         "--output", str(tmp_path / "run"), cache=cache)
    (line,) = error_lines(evaluated)  # before any model loads: no library line first
    assert line.startswith("error: 1 model file not in the HF cache") and cause in line and command in line
    assert not (tmp_path / "run").exists()

    # The loader's own check (generate plans nothing before it loads).
    generated = relbench("generate", "--profile", "full", "--device", "cpu", "--method", "sdxl", "--case", "astronaut-hug-cat",
                         "--output", str(tmp_path / "x.png"), cache=cache)
    (line,) = error_lines(generated)
    assert cause in line and command in line

    checked = relbench("models", "check", "--method", "sdxl", "--metrics", "none", "--variant", "none", cache=cache)
    assert checked.stdout.splitlines() == [f"missing: sdxl: {SDXL_REPO}@main: unet/diffusion_pytorch_model.safetensors"]
    assert len(error_lines(checked)) == 1
    # The GPU default (fp16 files) is complete.
    assert relbench("models", "check", "--method", "sdxl", "--metrics", "none", cache=cache).returncode == 0


def test_renaming_ms_adapter_bin_in_the_manifest_fails_check_and_the_rehearsal(hub: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    raw = json.loads(MANIFEST.path.read_text())
    ms = raw["models"]["ms_adapter"]
    ms["reads"] = ["ms_adapter_v2.bin"]
    ms["files"] = {"ms_adapter_v2.bin": ms["files"]["ms_adapter.bin"]}
    broken = tmp_path / "models.json"
    broken.write_text(json.dumps(raw))

    checked = relbench("models", "check", "--key", "ms_adapter", cache=hub[0], extra_env={"RELBENCH_MODELS_MANIFEST": str(broken)})
    (line,) = error_lines(checked)
    assert line.endswith("`relbench models download --key ms_adapter` (same HF_HUB_CACHE): ms_adapter (doge1516/MS-Diffusion@main): ms_adapter_v2.bin")

    manifest = load_manifest(broken)
    only = dataclasses.replace(manifest, models={"ms_adapter": manifest.models["ms_adapter"]})
    with pytest.raises(FileNotFoundError, match="rehearsal builder for ms_adapter wrote no ms_adapter_v2.bin"):
        build_cache(tmp_path / "hub", only)


def test_the_dense_encoder_loads_by_its_hub_id(hub: tuple[Path, dict[str, str]]) -> None:
    code = (
        "from PIL import Image\n"
        "from relbench.profiles import RunContext\n"
        "from relbench.methods.ms_diffusion.local_features import dense_encoder_for\n"
        "context = RunContext(profile='full', device='cpu', model_overrides={'dense_encoder': 'laion/CLIP-ViT-bigG-14-laion2B-39B-b160k'})\n"
        "encoder = dense_encoder_for(context)\n"
        "print(encoder.grid_size, encoder.width, tuple(encoder.encode([Image.new('RGB', (40, 30))]).shape))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(hub[0]), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # 896 px input / 14 px patches = a 64 x 64 grid of 32-wide features (the tiny bigG)
    assert result.stdout.split("\n")[-2] == "64 32 (1, 32, 64, 64)"
