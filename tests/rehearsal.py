"""The rehearsal cache: a Hugging Face hub cache holding, under the real repo ids of every model key
of ``relbench/manifests/models.json``, tiny random models saved with the real repositories' file
names, folders and formats (fp16 variants, shards with their index, ``.bin``-only repos,
``ms_adapter.bin``, legacy tokenizer and processor files).

It holds exactly the files the manifest says the loaders read (for every value a template field
takes, e.g. SDXL with and without ``fp16``), plus a few *decoys*: real neighbouring file names
filled with bytes no loader can parse, so that a loader that picked the wrong file fails.

Built once per content (a hash of this file, the manifest and the library versions) under
``$RELBENCH_REHEARSAL_DIR`` or ``~/.cache/relbench/rehearsal``, in a temporary folder renamed into
place. Use ``HF_HUB_CACHE=<cache>`` and ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relbench.models_manifest import Manifest, ModelEntry, load_manifest

SEED = 0
DECOY = b"rehearsal decoy: a loader that reads this file picked the wrong file of the repository\n"
# Real neighbouring files the loaders must not read (each is in the manifest's file list).
DECOYS: dict[str, tuple[str, ...]] = {
    "clip": ("pytorch_model.bin", "tf_model.h5"),
    "ip_adapter": ("sdxl_models/ip-adapter-plus_sdxl_vit-h.bin", "models/image_encoder/pytorch_model.bin"),
    "image_encoder": ("open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                      "pytorch_model-00001-of-00002.bin"),
    "sd15": ("unet/diffusion_pytorch_model.non_ema.safetensors", "safety_checker/model.safetensors"),
    "sdxl": ("sd_xl_base_1.0.safetensors", "text_encoder/openvino_model.bin"),
}


def fake_commit(entry: ModelEntry) -> str:
    """The manifest's commit when one was seen, else a stable stand-in derived from the repo id."""
    return entry.commit or hashlib.sha1(f"relbench-rehearsal:{entry.repo}".encode()).hexdigest()


def files_to_hold(entry: ModelEntry) -> list[str]:
    """Every file the loader reads, for every value its template fields take."""
    fields = sorted(entry.choices)
    out: list[str] = []
    for combo in itertools.product(*(entry.choices[f] for f in fields)) if fields else [()]:
        for path in entry.files_read(dict(zip(fields, combo))):
            if path not in out:
                out.append(path)
    return out


# --------------------------------------------------------------------------------------------
# Saving in the real repositories' formats


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def shard(folder: Path, single: str, count: int, shard_name: str, index_name: str) -> None:
    """Split ``folder/single`` (safetensors) into ``count`` shards named like the hub's, with the
    index transformers and diffusers read (``metadata.total_size``, ``weight_map``)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / single))
    names = sorted(tensors)
    if len(names) < count:
        raise ValueError(f"{single}: {len(names)} tensors cannot make {count} shards")
    weight_map: dict[str, str] = {}
    for i in range(count):
        part = names[i * len(names) // count:(i + 1) * len(names) // count]
        file = shard_name.format(index=i + 1, count=count)
        save_file({n: tensors[n].contiguous() for n in part}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    write_json(folder / index_name, {"metadata": {"total_size": total}, "weight_map": weight_map})
    (folder / single).unlink()


def clip_tokenizer_files(folder: Path) -> None:
    """The CLIP tokenizer as the hub repos ship it: vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json (and tokenizer.json, which only some have)."""
    from relbench.tiny import clip_bpe_files, clip_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_tokenizer()
    tokenizer.save_pretrained(str(folder))  # tokenizer.json + tokenizer_config.json
    vocab, merges = clip_bpe_files()
    shutil.copyfile(vocab, folder / "vocab.json")
    shutil.copyfile(merges, folder / "merges.txt")
    write_json(folder / "special_tokens_map.json", dict(tokenizer.special_tokens_map))


def special_tokens_map(tokenizer: Any, folder: Path) -> None:
    write_json(folder / "special_tokens_map.json", dict(tokenizer.special_tokens_map))


# --------------------------------------------------------------------------------------------
# One builder per repository: tiny random weights, real layout


def build_sdxl(stage: Path) -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline

    from relbench.tiny import tiny_sdxl_components

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(SEED), add_watermarker=False)
    pipe.to(torch.float16).save_pretrained(str(stage), variant="fp16")
    pipe.to(torch.float32).save_pretrained(str(stage))  # configs as float32; plain weight files
    for name in ("tokenizer", "tokenizer_2"):
        clip_tokenizer_files(stage / name)


def build_sd15(stage: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from relbench.methods.reversion.models import tiny_sd15_components

    pipe = StableDiffusionPipeline(**tiny_sd15_components(SEED), requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(str(stage), variant="fp16")
    pipe.to(torch.float32).save_pretrained(str(stage))
    clip_tokenizer_files(stage / "tokenizer")


def build_clip(stage: Path) -> None:
    from relbench.tiny import tiny_clip

    model, processor = tiny_clip(SEED)
    model.save_pretrained(str(stage))
    processor.save_pretrained(str(stage))
    clip_tokenizer_files(stage)


def build_dino(stage: Path) -> None:
    import torch

    from relbench.tiny import tiny_dino

    model, processor = tiny_dino(SEED)
    model.config.save_pretrained(str(stage))
    processor.save_pretrained(str(stage))
    # facebook/dino-vits16 has no safetensors on main: one pickled state dict.
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, stage / "pytorch_model.bin")


def build_judge(stage: Path) -> None:
    from relbench.metrics.relation_judge.local import _tiny_vocab_and_merges, tiny_vlm

    model, processor = tiny_vlm(SEED)
    model.save_pretrained(str(stage))
    shard(stage, "model.safetensors", 5, "model-{index:05d}-of-{count:05d}.safetensors", "model.safetensors.index.json")
    processor.image_processor.save_pretrained(str(stage))  # preprocessor_config.json
    processor.tokenizer.save_pretrained(str(stage))  # tokenizer.json + tokenizer_config.json
    vocab, merges = _tiny_vocab_and_merges()
    write_json(stage / "vocab.json", dict(vocab))
    (stage / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8")
    write_json(stage / "chat_template.json", {"chat_template": processor.chat_template})  # the repo's legacy form


def build_ip_adapter(stage: Path) -> None:
    from safetensors.torch import save_file

    from relbench.methods.ip_adapter.method import tiny_image_encoder, tiny_ip_adapter_state_dict
    from relbench.tiny import tiny_sdxl_components

    unet = tiny_sdxl_components(SEED)["unet"]
    encoder, _ = tiny_image_encoder(SEED)
    encoder.save_pretrained(str(stage / "models" / "image_encoder"))
    state = tiny_ip_adapter_state_dict(unet, encoder.config.hidden_size, SEED)
    flat = {f"{part}.{key}": value.contiguous() for part, values in state.items() for key, value in values.items()}
    (stage / "sdxl_models").mkdir(parents=True)
    save_file(flat, str(stage / "sdxl_models" / "ip-adapter-plus_sdxl_vit-h.safetensors"))


def build_omnigen(stage: Path) -> None:
    from diffusers import OmniGenPipeline

    from relbench.methods.omnigen.method import tiny_omnigen_components

    components = tiny_omnigen_components(SEED)
    OmniGenPipeline(**components).save_pretrained(str(stage))
    special_tokens_map(components["tokenizer"], stage / "tokenizer")
    shard(stage / "transformer", "diffusion_pytorch_model.safetensors", 2,
          "diffusion_pytorch_model-{index:05d}-of-{count:05d}.safetensors", "diffusion_pytorch_model.safetensors.index.json")


def build_detector(stage: Path) -> None:
    from relbench.metrics.identity.detector import tiny_owlv2

    model, processor = tiny_owlv2(SEED)
    model.save_pretrained(str(stage))
    processor.save_pretrained(str(stage))
    clip_tokenizer_files(stage)


def build_pose(stage: Path) -> None:
    from relbench.metrics.pose.backends import tiny_vitpose

    model, processor = tiny_vitpose(SEED)
    model.save_pretrained(str(stage))
    processor.save_pretrained(str(stage))


# The tiny bigG: a whole CLIP checkpoint (text and vision towers) as laion's repo holds, at the
# real input geometry (224 px, 14 px patches: 257 tokens), 32 wide. Its vision_config names the
# projection width, as the real one must: CLIPVisionModelWithProjection reads only vision_config.
BIGG_VISION = dict(image_size=224, patch_size=14, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                   num_attention_heads=4, hidden_act="gelu", projection_dim=32)


def build_image_encoder(stage: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from relbench.tiny import seeded, tiny_clip_text_config

    config = CLIPConfig(text_config=tiny_clip_text_config(), vision_config=BIGG_VISION, projection_dim=32)
    with seeded(SEED + 2):
        model = CLIPModel(config).eval()
    model.save_pretrained(str(stage))
    shard(stage, "model.safetensors", 2, "model-{index:05d}-of-{count:05d}.safetensors", "model.safetensors.index.json")
    CLIPImageProcessor().save_pretrained(str(stage))
    clip_tokenizer_files(stage)


# MS-Diffusion's adapter for the tiny SDXL and the tiny bigG above. Its file holds no head count:
# the loader reads 64-wide heads (as diffusers does for IP-Adapter), so the tiny one has one head.
def ms_adapter_config() -> Any:
    from relbench.methods.ms_diffusion.config import MSAdapterConfig

    return MSAdapterConfig(
        cross_attention_dim=64, image_embed_dim=BIGG_VISION["hidden_size"], image_tokens=257, phrase_embed_dim=32,
        resampler_dim=32, depth=2, dim_head=64, heads=1, num_queries=4, ff_mult=2,
    )


def build_ms_adapter(stage: Path) -> None:
    from relbench.methods.ms_diffusion.adapter import MSAdapter
    from relbench.tiny import seeded, tiny_sdxl_components

    unet = tiny_sdxl_components(SEED)["unet"]
    with seeded(SEED + 1):
        adapter = MSAdapter(ms_adapter_config(), unet)
    adapter.save(stage / "ms_adapter.bin")  # the public nested layout, torch.save


BUILDERS: dict[str, Callable[[Path], None]] = {
    "sdxl": build_sdxl, "clip": build_clip, "dino": build_dino, "judge": build_judge, "ip_adapter": build_ip_adapter,
    "omnigen": build_omnigen, "sd15": build_sd15, "detector": build_detector, "pose": build_pose,
    "ms_adapter": build_ms_adapter, "image_encoder": build_image_encoder,
}
# Keys that read another key's repository (no builder of their own).
SAME_REPO = {"dense_encoder": "image_encoder"}


# --------------------------------------------------------------------------------------------
# The cache


def repo_folder(cache: Path, repo: str) -> Path:
    return cache / ("models--" + repo.replace("/", "--"))


def place(cache: Path, entry: ModelEntry, stage: Path, files: list[str], decoys: tuple[str, ...]) -> str:
    """Copy exactly ``files`` from ``stage`` into the snapshot of ``entry.repo``; write the decoys."""
    commit = fake_commit(entry)
    folder = repo_folder(cache, entry.repo)
    snapshot = folder / "snapshots" / commit
    for path in files:
        if not (stage / path).is_file():
            raise FileNotFoundError(f"rehearsal builder for {entry.key} wrote no {path} (has: {sorted(str(p.relative_to(stage)) for p in stage.rglob('*') if p.is_file())})")
        (snapshot / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stage / path, snapshot / path)
    for path in decoys:
        if path not in entry.files or path in files:
            raise ValueError(f"decoy {path} of {entry.key}: must be a file of the repo that no loader reads")
        (snapshot / path).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / path).write_bytes(DECOY)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / entry.revision).write_text(commit)
    (folder / "blobs").mkdir(exist_ok=True)
    return commit


def build_cache(cache: Path, manifest: Manifest) -> dict[str, str]:
    """Build every repo of the manifest into ``cache``; returns key -> commit."""
    import torch

    commits: dict[str, str] = {}
    held: dict[str, list[str]] = {}
    for key, entry in manifest.models.items():
        held.setdefault(entry.repo, [])
        held[entry.repo] += [p for p in files_to_hold(entry) if p not in held[entry.repo]]
    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]):
        built: set[str] = set()
        for key, entry in manifest.models.items():
            owner = SAME_REPO.get(key, key)
            if entry.repo not in built:
                stage = Path(tmp) / owner
                stage.mkdir()
                BUILDERS[owner](stage)
                place(cache, entry, stage, held[entry.repo], DECOYS.get(owner, ()))
                built.add(entry.repo)
            commits[key] = fake_commit(entry)
    return commits


def content_key(manifest: Manifest) -> str:
    """What the cache depends on: this builder, the manifest, the libraries that write the files."""
    import diffusers
    import torch
    import transformers

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(manifest.path.read_bytes())
    for module in ("relbench.tiny", "relbench.methods.ms_diffusion.adapter", "relbench.methods.ip_adapter.method",
                   "relbench.methods.omnigen.method", "relbench.metrics.relation_judge.local"):
        import importlib

        digest.update(Path(importlib.import_module(module).__file__ or "").read_bytes())
    digest.update(f"{torch.__version__} {transformers.__version__} {diffusers.__version__}".encode())
    return digest.hexdigest()[:16]


def rehearsal_cache(manifest: Manifest | None = None, root: Path | None = None) -> tuple[Path, dict[str, str]]:
    """(HF cache folder, key -> commit), built on first use and reused while its content key holds."""
    manifest = manifest or load_manifest()
    root = root or Path(os.environ.get("RELBENCH_REHEARSAL_DIR") or Path.home() / ".cache" / "relbench" / "rehearsal")
    final = root / content_key(manifest)
    commits_file = final / "commits.json"
    if not commits_file.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
        try:
            commits = build_cache(tmp / "hub", manifest)
            write_json(tmp / "commits.json", commits)
            try:
                tmp.rename(final)
            except OSError:  # another process built it first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in root.iterdir():  # caches of older builders or manifests
            if old != final and not old.name.startswith(".build-"):
                shutil.rmtree(old, ignore_errors=True)
    return final / "hub", json.loads(commits_file.read_text())
