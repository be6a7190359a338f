"""The models manifest and `relbench models list/download/check` (no model is built here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from relbench.errors import RelbenchError, exception_line
from relbench.models_manifest import (
    Request, command_requests, download_command, list_lines, load_manifest, missing_files, missing_message, resolve,
)
from relbench.profiles import FULL_MODELS, RunContext

REPO = Path(__file__).resolve().parents[1]
MANIFEST = load_manifest()


def relbench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


# --------------------------------------------------------------------------------------------
# The manifest agrees with the code


def test_every_full_model_key_is_in_the_manifest_with_its_repo_and_revision() -> None:
    for key, (repo, revision) in FULL_MODELS.items():
        entry = MANIFEST.entry(key)
        assert (entry.repo, entry.revision, entry.default) == (repo, revision, True), key
    assert {k for k, e in MANIFEST.models.items() if not e.default} == {"dense_encoder"}


def test_every_file_read_is_a_file_of_the_repo_for_every_choice() -> None:
    import itertools

    for entry in MANIFEST.models.values():
        fields = sorted(entry.choices)
        for combo in itertools.product(*(entry.choices[f] for f in fields)):
            for path in entry.files_read(dict(zip(fields, combo))):
                assert path in entry.files, (entry.key, path)
        assert entry.files_read() == entry.files_read(dict(entry.settings))


def test_methods_and_metrics_tables_match_the_registries_and_classes() -> None:
    from relbench.methods import METHODS
    from relbench.metrics import METRICS

    assert set(MANIFEST.methods) == set(METHODS.names())
    assert set(MANIFEST.metrics) == set(METRICS.names())
    for name, keys in MANIFEST.methods.items():
        assert tuple(METHODS.get(name).model_keys) == keys, name
    for entry in METRICS.entries():  # a metric's own model key is among those it reads
        assert entry.meta.get("model") in MANIFEST.metrics[entry.name], entry.name
    assert set(MANIFEST.trainers) == {e.name for e in METHODS.entries() if e.meta.get("trainer")}


def test_template_defaults_are_the_methods_gpu_defaults_and_cpu_reads_full_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from relbench.methods import METHODS

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the GPU defaults, on a machine without one
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for device, expect_variant in (("cuda", None), ("cpu", "")):
        context = RunContext(profile="full", device=device)
        for name, keys in MANIFEST.methods.items():
            settings = METHODS.get(name).default_settings(context)
            for key in keys:
                for field, default in MANIFEST.models[key].settings.items():
                    if not hasattr(settings, field):
                        continue
                    expected = expect_variant if field == "variant" and expect_variant is not None else default
                    assert getattr(settings, field) == expected, (device, name, key, field)


def test_sdxl_reads_the_fp16_variant_on_gpu_and_the_full_files_otherwise() -> None:
    sdxl = MANIFEST.entry("sdxl")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in sdxl.files_read()
    plain = sdxl.files_read({"variant": ""})
    assert "unet/diffusion_pytorch_model.safetensors" in plain and not any(".fp16." in p for p in plain)
    assert len(plain) == len(sdxl.files_read()) == 18
    assert MANIFEST.entry("dino").files_read() == ("config.json", "pytorch_model.bin", "preprocessor_config.json")
    assert MANIFEST.entry("ip_adapter").files_read({"weight_name": "ip-adapter_sdxl.safetensors"})[-1] == "sdxl_models/ip-adapter_sdxl.safetensors"


# --------------------------------------------------------------------------------------------
# What a command needs, and the commands that fetch it


def test_needs_merge_users_and_variants_of_one_key() -> None:
    requests = command_requests(MANIFEST, methods=["sdxl", "ip-adapter"], metrics=["clip_t", "clip_i"], trainers=["dreamrelation"])
    needs = {need.key: need for need in resolve(MANIFEST, requests)}
    assert list(needs) == ["sdxl", "clip", "ip_adapter", "ms_adapter", "image_encoder"]
    assert needs["sdxl"].users == ("method:sdxl", "method:ip-adapter", "train:dreamrelation")
    # evaluate reads the fp16 files on GPU, the trainer the full-precision ones: both are fetched
    assert len(needs["sdxl"].files) == 18 + 4
    assert needs["clip"].users == ("metric:clip_t", "metric:clip_i")
    with pytest.raises(RelbenchError, match="unknown method 'nosuch'"):
        command_requests(MANIFEST, methods=["nosuch"])


def test_download_command_names_keys_and_a_variant_only_where_it_differs() -> None:
    gpu = resolve(MANIFEST, [Request("method:sdxl", "sdxl"), Request("metric:dino", "dino")])
    assert download_command(gpu) == "`relbench models download --key sdxl --key dino`"
    cpu = resolve(MANIFEST, [Request("m", "sdxl", values={"variant": ""}), Request("m", "dino"), Request("m", "sd15")])
    assert download_command(cpu) == "`relbench models download --key sdxl --key dino --key sd15 --variant none`"
    mixed = resolve(MANIFEST, [Request("m", "sdxl"), Request("m", "sd15", values={"variant": "fp16"})])
    assert download_command(mixed) == "`relbench models download --key sdxl --key sd15 --variant fp16`"
    both = resolve(MANIFEST, [Request("m", "sdxl"), Request("t", "sdxl", values={"variant": ""}), Request("m", "clip")])
    # one need reading both variants (evaluate on GPU and a trainer): both commands
    assert download_command(both) == "`relbench models download --key sdxl --key clip` and `relbench models download --key sdxl --variant none`"


def test_missing_files_are_listed_per_repo_with_the_command_first(tmp_path: Path) -> None:
    needs = resolve(MANIFEST, [Request("m", "dino"), Request("m", "ms_adapter")])
    snapshot = tmp_path / "models--facebook--dino-vits16" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--facebook--dino-vits16" / "refs").mkdir()
    (tmp_path / "models--facebook--dino-vits16" / "refs" / "main").write_text("a" * 40)
    missing = missing_files(needs, tmp_path)
    assert [(n.key, files) for n, files in missing] == [("dino", ["pytorch_model.bin", "preprocessor_config.json"]), ("ms_adapter", ["ms_adapter.bin"])]
    assert missing_message(missing, tmp_path) == (
        f"3 model files not in the HF cache {tmp_path}; fetch them where there is network with "
        "`relbench models download --key dino --key ms_adapter` (same HF_HUB_CACHE): "
        "dino (facebook/dino-vits16@main): pytorch_model.bin, preprocessor_config.json; ms_adapter (doge1516/MS-Diffusion@main): ms_adapter.bin"
    )


def test_list_shows_files_sizes_and_the_memory_estimate() -> None:
    lines = list_lines(resolve(MANIFEST, command_requests(MANIFEST, methods=["sdxl"], metrics=["clip_t"])))
    sdxl, clip = lines[1], lines[20]
    # 3,468,837,867 params x 2 bytes (float16) = 6.46 GiB + 5 GiB activations; 427,616,513 x 4 = 1.59 + 0.5
    assert sdxl.split()[:6] == ["sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "main", "18", "6.9", "GB"]
    assert "~11.5 GiB (3.47B params, float16)" in sdxl and sdxl.endswith("used by method:sdxl")
    assert lines[2:4] == ["    model_index.json  609 B", "    scheduler/scheduler_config.json  479 B"]
    assert clip.split()[:6] == ["clip", "openai/clip-vit-large-patch14", "main", "8", "1.7", "GB"] and "~2.1 GiB" in clip
    assert lines[-1] == ("total download 8.7 GB (26 files, sizes approximate); "
                         "GPU memory: ~13.6 GiB at the peak (method:sdxl 11.5 GiB + metrics 2.1 GiB)")


def test_download_fetches_exactly_the_files_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    import relbench.models_manifest as mm

    calls = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda repo, **kw: calls.append((repo, kw)) or f"/cache/{repo}")
    needs = resolve(MANIFEST, [Request("m", "dino"), Request("m", "judge")])
    assert mm.download(needs, echo=lambda line: None) == ["/cache/facebook/dino-vits16", "/cache/Qwen/Qwen2.5-VL-7B-Instruct"]
    assert calls[0] == ("facebook/dino-vits16", {"revision": "main", "allow_patterns": ["config.json", "pytorch_model.bin", "preprocessor_config.json"]})
    shards = [p for p in calls[1][1]["allow_patterns"] if p.startswith("model-")]
    assert shards == [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RelbenchError, match="HF_HUB_OFFLINE is set"):
        mm.download(needs)


def test_exception_line_keeps_the_first_line_and_cuts_at_a_word() -> None:
    exc = OSError("Error no file named diffusion_pytorch_model.fp16.safetensors found in directory /x/unet.\nmore text")
    assert exception_line(exc) == "OSError: Error no file named diffusion_pytorch_model.fp16.safetensors found in directory /x/unet."
    assert exception_line(ValueError("word " * 100), 23) == "ValueError: word word word word…"
    assert exception_line(KeyError()) == "KeyError"


# --------------------------------------------------------------------------------------------
# The command line


def test_models_cli_list_without_torch_and_check_of_an_empty_cache(tmp_path: Path) -> None:
    code = ("import sys, cli\ntry:\n    cli.app(['models', 'list', '--method', 'dreamrelation', '--metrics', 'none'])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules and 'transformers' not in sys.modules\n")
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines() if not line.startswith((" ", "key", "total"))] == [
        "sdxl", "ms_adapter", "image_encoder"]

    checked = relbench("models", "check", "--key", "ms_adapter,pose", env={"HF_HUB_CACHE": str(tmp_path)})
    assert checked.returncode == 2 and "Traceback" not in checked.stderr
    assert checked.stdout.splitlines() == [  # in the manifest's order
        "missing: pose: usyd-community/vitpose-plus-base@main: config.json",
        "missing: pose: usyd-community/vitpose-plus-base@main: model.safetensors",
        "missing: pose: usyd-community/vitpose-plus-base@main: preprocessor_config.json",
        "missing: ms_adapter: doge1516/MS-Diffusion@main: ms_adapter.bin",
    ]
    errors = [line for line in checked.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: 4 model files not in the HF cache")
    assert "`relbench models download --key pose --key ms_adapter`" in errors[0]


def test_a_manifest_naming_another_file_is_what_check_looks_for(tmp_path: Path) -> None:
    raw = json.loads(MANIFEST.path.read_text())
    raw["models"]["ms_adapter"]["reads"] = ["ms_adapter_v2.bin"]
    raw["models"]["ms_adapter"]["files"] = {"ms_adapter_v2.bin": 10}
    (tmp_path / "models.json").write_text(json.dumps(raw))
    folder = tmp_path / "hub" / "models--doge1516--MS-Diffusion"
    (folder / "snapshots" / ("b" * 40)).mkdir(parents=True)
    (folder / "snapshots" / ("b" * 40) / "ms_adapter.bin").write_bytes(b"x")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("b" * 40)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    assert relbench("models", "check", "--key", "ms_adapter", env=env).returncode == 0
    broken = relbench("models", "check", "--key", "ms_adapter", env={**env, "RELBENCH_MODELS_MANIFEST": str(tmp_path / "models.json")})
    assert broken.returncode == 2
    assert [line for line in broken.stderr.splitlines() if line.strip()] == [
        f"error: 1 model file not in the HF cache {tmp_path / 'hub'}; fetch them where there is network with "
        "`relbench models download --key ms_adapter` (same HF_HUB_CACHE): ms_adapter (doge1516/MS-Diffusion@main): ms_adapter_v2.bin"
    ]


def test_evaluate_checks_only_hub_ids_the_manifest_knows(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from relbench.models_manifest import plan_needs

    overrides = {"sdxl": str(tmp_path), "judge": "api:gpt-4o", "dense_encoder": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
                 "clip": "org/another-clip@abc"}
    context = RunContext(profile="full", device="cpu", model_overrides=overrides)
    settings = SimpleNamespace(variant="", dtype="float32")
    needs = plan_needs(MANIFEST, context.model, [("ms-diffusion", (), settings)], ["clip_t", "relation_vqa", "dino"], overrides)
    # sdxl is a local folder, the judge an API, clip another repo: their loaders deal with them
    assert [(n.key, n.users) for n in needs] == [
        ("dino", ("metric:dino",)), ("ms_adapter", ("method:ms-diffusion",)),
        ("image_encoder", ("method:ms-diffusion",)), ("dense_encoder", ("model:dense_encoder",)),
    ]
    pinned = RunContext(profile="full", device="cpu", model_overrides={"sdxl": "stabilityai/stable-diffusion-xl-base-1.0@" + "c" * 40})
    (need,) = plan_needs(MANIFEST, pinned.model, [("sdxl", (), settings)], [], pinned.model_overrides)
    assert need.revision == "c" * 40 and "unet/diffusion_pytorch_model.safetensors" in need.files


def test_the_commit_is_read_from_a_snapshot_path_or_a_pipelines_components() -> None:
    from types import SimpleNamespace

    from relbench.profiles import pipeline_revision, resolved_revision

    commit = "b3b4ca92a288475c1986fb88635972e4e317becb"
    snapshot = f"/cache/models--stabilityai--stable-diffusion-xl-base-1.0/snapshots/{commit}"
    assert resolved_revision(snapshot) == commit
    assert resolved_revision(f"{snapshot}/unet") == commit  # a component of a pipeline loaded by hub id
    assert resolved_revision(f"/cache/snapshots/{commit[:39]}/unet") is None  # not a commit hash
    assert resolved_revision("stabilityai/stable-diffusion-xl-base-1.0") is None and resolved_revision(None) is None
    by_id = SimpleNamespace(config={"_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0"},
                            components={"scheduler": SimpleNamespace(config={}), "tokenizer": object(),
                                        "unet": SimpleNamespace(config=SimpleNamespace(_name_or_path=f"{snapshot}/unet"))})
    assert pipeline_revision(by_id) == commit
    local = SimpleNamespace(config={"_name_or_path": "/models/sdxl"}, components={"unet": SimpleNamespace(config=SimpleNamespace(_name_or_path="/models/sdxl/unet"))})
    assert pipeline_revision(local) is None
