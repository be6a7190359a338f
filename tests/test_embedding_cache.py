"""The on-disk reference-embedding cache: hits across metric instances and processes, misses when
the embedder's settings change, damaged files recomputed with a warning, atomic writes, and
memory-only use for models without a stable identity. Tiny models, scikit-image photos, offline."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network (see conftest)

import pytest
import torch
from PIL import Image

from relbench.metrics import embedding_cache as cache_module
from relbench.metrics.base import ScoringSample
from relbench.metrics.clip import CLIPIScore
from relbench.metrics.dino import DINOScore
from relbench.metrics.embedding_cache import (
    EmbeddingStore,
    ReferenceEmbeddings,
    default_cache_dir,
    image_digest,
    settings_hash,
    weights_identity,
)
from relbench.profiles import RunContext

REPO = Path(__file__).resolve().parents[1]
CPU = dict(device="cpu")
LOGGER = "relbench.metrics.embedding_cache"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "embeddings"
    monkeypatch.setenv("RELBENCH_EMBEDDING_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    import skimage.data

    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in ("astronaut", "chelsea", "coffee", "rocket")}


@pytest.fixture(scope="module")
def samples(photos) -> list[ScoringSample]:
    a, c, k, r = photos["astronaut"], photos["chelsea"], photos["coffee"], photos["rocket"]

    def sample(case_id: str, image: Image.Image, subjects: dict[str, tuple[Image.Image, ...]]) -> ScoringSample:
        return ScoringSample(case_id, image, "a photo", "next to", tuple(subjects), tuple(subjects), tuple(subjects.values()))

    # Generated images are the rocket and crops, never a reference: 3 distinct references (a, c, k).
    return [
        sample("c1", r, {"astronaut": (a,), "cat": (c, k)}),
        sample("c2", a.crop((0, 0, 300, 300)), {"cat": (c,), "cup": (k,)}),
        sample("c3", c.crop((50, 0, 400, 300)), {"cup": (k, a), "astronaut": (a,)}),
    ]


class ImagesThrough:
    """Counts images through a vision model's forward."""

    def __init__(self, module: torch.nn.Module):
        self.n = 0
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        self.n += kwargs["pixel_values"].shape[0]


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"))


# ------------------------------------------------------------------------------------------
# Hits


def test_second_instance_reads_every_reference_from_disk(samples, cache_dir):
    first_metric = CLIPIScore(RunContext(profile="tiny", **CPU))
    first = first_metric.score(samples)
    assert first_metric.embedder.references.computed == 3 and len(cache_files(cache_dir)) == 3
    (settings_file,) = cache_dir.glob("*/settings.json")
    recorded = json.loads(settings_file.read_text())
    assert recorded["model"] == "tiny:clip" and recorded["weights"]["tiny_seed"] == 0 and recorded["dtype"] == "float32"
    assert recorded["preprocessing"]["resize"] == {"shortest_edge": 32}

    again = CLIPIScore(RunContext(profile="tiny", **CPU))  # a new context: a new model, empty memory
    through = ImagesThrough(again.embedder.model.vision_model)
    second = again.score(samples)
    assert through.n == 3  # the generated images only
    assert (again.embedder.references.computed, again.embedder.references.from_disk) == (0, 3)
    # Same batch of generated images, references stored as computed: bit-identical results.
    assert [(r.value, r.details) for r in second] == [(r.value, r.details) for r in first]


def test_a_new_process_embeds_no_reference_again(samples, cache_dir):
    clip_first, dino_first = CLIPIScore(RunContext(profile="tiny", **CPU)), DINOScore(RunContext(profile="tiny", **CPU))
    expected = {"clip_i": [r.value for r in clip_first.score(samples)], "dino": [r.value for r in dino_first.score(samples)]}
    script = f"""
import json
from PIL import Image
from relbench.metrics.base import ScoringSample
from relbench.metrics.clip import CLIPIScore
from relbench.metrics.dino import DINOScore
from relbench.profiles import RunContext
import skimage.data
photos = {{n: Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in ("astronaut", "chelsea", "coffee", "rocket")}}
a, c, k = photos["astronaut"], photos["chelsea"], photos["coffee"]
generated = [photos["rocket"], a.crop((0, 0, 300, 300)), c.crop((50, 0, 400, 300))]
subjects = [{{"astronaut": (a,), "cat": (c, k)}}, {{"cat": (c,), "cup": (k,)}}, {{"cup": (k, a), "astronaut": (a,)}}]
samples = [ScoringSample(f"c{{i}}", g, "a photo", "next to", tuple(s), tuple(s), tuple(s.values())) for i, (g, s) in enumerate(zip(generated, subjects))]
out = {{}}
for name, metric in (("clip_i", CLIPIScore(RunContext(profile="tiny", device="cpu"))), ("dino", DINOScore(RunContext(profile="tiny", device="cpu")))):
    vision = metric.embedder.model.vision_model if name == "clip_i" else metric.embedder.model
    seen = []
    vision.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["pixel_values"].shape[0]), with_kwargs=True)
    values = [r.value for r in metric.score(samples)]
    out[name] = {{"values": values, "images": sum(seen), "computed": metric.embedder.references.computed,
                  "from_disk": metric.embedder.references.from_disk}}
print(json.dumps(out))
"""
    env = {**os.environ, "RELBENCH_EMBEDDING_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("clip_i", "dino"):
        assert out[name]["images"] == 3, name  # three generated images, no reference
        assert (out[name]["computed"], out[name]["from_disk"]) == (0, 3), name
        assert out[name]["values"] == pytest.approx(expected[name], abs=1e-5), name


def test_identity_analysis_reads_the_references_dino_and_clip_i_stored(samples, cache_dir):
    from relbench.metrics.identity.metric import IdentityCLIPScore

    CLIPIScore(RunContext(profile="tiny", **CPU)).score(samples)
    DINOScore(RunContext(profile="tiny", **CPU)).score(samples)
    identity = IdentityCLIPScore(RunContext(profile="tiny", **CPU))
    identity.score(samples)
    analyzer = identity.analyzer
    assert (analyzer.clip.references.computed, analyzer.clip.references.from_disk) == (0, 3)
    assert (analyzer.dino.references.computed, analyzer.dino.references.from_disk) == (0, 3)


# ------------------------------------------------------------------------------------------
# Misses


def test_other_settings_miss_and_get_their_own_folder(samples, cache_dir):
    def computed(metric) -> int:
        metric.score(samples)
        return metric.embedder.references.computed

    assert computed(DINOScore(RunContext(profile="tiny", **CPU))) == 3
    assert computed(DINOScore(RunContext(profile="tiny", **CPU))) == 0  # the same settings: hits
    assert computed(DINOScore(RunContext(profile="tiny", **CPU), pooling="mean")) == 3  # other pooling
    assert computed(DINOScore(RunContext(profile="tiny", **CPU), dtype="bfloat16")) == 3  # other dtype
    assert computed(DINOScore(RunContext(profile="tiny", seed=1, **CPU))) == 3  # other weights
    assert computed(CLIPIScore(RunContext(profile="tiny", **CPU))) == 3  # other model
    folders = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert len(folders) == 5 and all(len(cache_files(f)) == 3 for f in folders)
    recorded = sorted((s["embedder"], s["pooling"][:4], s["dtype"], s["weights"]["tiny_seed"])
                      for s in (json.loads((f / "settings.json").read_text()) for f in folders))
    assert recorded == [("clip.image_embeds", "CLS ", "float32", 0), ("dino.last_hidden_state", "cls", "bfloat16", 0),
                        ("dino.last_hidden_state", "cls", "float32", 0), ("dino.last_hidden_state", "cls", "float32", 1),
                        ("dino.last_hidden_state", "mean", "float32", 0)]


def test_rewritten_model_folder_misses(samples, cache_dir, tmp_path):
    from relbench.tiny import tiny_dino

    folder = tmp_path / "dino"
    model, processor = tiny_dino(seed=5)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    context = RunContext(profile="full", model_overrides={"dino": str(folder)}, **CPU)
    first = DINOScore(context)
    first.score(samples)
    assert first.embedder.references.computed == 3
    second = DINOScore(RunContext(profile="full", model_overrides={"dino": str(folder)}, **CPU))
    second.score(samples)
    assert second.embedder.references.computed == 0  # a plain folder, unchanged: hits

    model, _ = tiny_dino(seed=6)
    model.save_pretrained(folder)  # other weights in the same place: size or mtime of the file changes
    third = DINOScore(RunContext(profile="full", model_overrides={"dino": str(folder)}, **CPU))
    third.score(samples)
    assert third.embedder.references.computed == 3


def test_weights_identity_by_origin(tmp_path):
    from relbench.tiny import tiny_dino

    model, _ = tiny_dino(seed=0)
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert weights_identity(model, source="org/name", revision=commit, tiny_seed=None) == {"commit": commit}
    assert weights_identity(model, source="org/name", revision="main", tiny_seed=None) is None  # unresolved branch
    assert weights_identity(model, source=None, revision=None, tiny_seed=None) is None  # built in memory
    tiny = weights_identity(model, source=None, revision=None, tiny_seed=0)
    assert tiny["tiny_seed"] == 0 and tiny == weights_identity(tiny_dino(seed=0)[0], source=None, revision=None, tiny_seed=0)
    assert tiny["weights_sha256"] != weights_identity(tiny_dino(seed=1)[0], source=None, revision=None, tiny_seed=1)["weights_sha256"]
    (tmp_path / "config.json").write_text("{}")
    by_folder = weights_identity(model, source=str(tmp_path), revision=None, tiny_seed=None)
    assert by_folder["folder"] == str(tmp_path.resolve()) and by_folder["files"][0][:2] == ["config.json", 2]
    assert settings_hash({"a": 1, "b": [2]}) == settings_hash({"b": [2], "a": 1}) != settings_hash({"a": 1, "b": [3]})


# ------------------------------------------------------------------------------------------
# Damage and atomic writes


def test_damaged_files_are_recomputed_with_a_warning(samples, cache_dir, caplog):
    first = DINOScore(RunContext(profile="tiny", **CPU))
    expected = [r.value for r in first.score(samples)]
    truncated, garbage, flipped = cache_files(cache_dir)
    truncated.write_bytes(truncated.read_bytes()[:40])
    garbage.write_bytes(b"not a safetensors file")
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0x01  # one bit of the vector: still loads, fails its checksum
    flipped.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        second = DINOScore(RunContext(profile="tiny", **CPU))
        values = [r.value for r in second.score(samples)]
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 3 and all(w.startswith("embedding cache: recomputing ") for w in warnings)
    assert any("checksum mismatch" in w and flipped.name in w for w in warnings)
    assert second.embedder.references.computed == 3 and values == pytest.approx(expected, abs=1e-5)

    caplog.clear()
    third = DINOScore(RunContext(profile="tiny", **CPU))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        third.score(samples)
    assert third.embedder.references.from_disk == 3 and not [r for r in caplog.records if r.name == LOGGER]  # repaired


def test_entry_of_another_key_or_shape_is_not_served(tmp_path, caplog):
    store = EmbeddingStore(tmp_path, {"model": "x"}, dim=4)
    store.put("ab" * 20, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert store.get("ab" * 20).tolist() == [1.0, 0.0, 0.0, 0.0]
    # Copied under another digest (e.g. by hand): refused.
    store.path("cd" * 20).parent.mkdir(parents=True, exist_ok=True)
    store.path("cd" * 20).write_bytes(store.path("ab" * 20).read_bytes())
    other_dim = EmbeddingStore(tmp_path, {"model": "x"}, dim=8)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.get("cd" * 20) is None
        assert other_dim.get("ab" * 20) is None
        assert store.get("ef" * 20) is None  # missing: a plain miss, no warning
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 2 and "another key" in messages[0] and "expected float32 (8,)" in messages[1]


def test_writes_are_atomic(tmp_path, monkeypatch):
    store = EmbeddingStore(tmp_path, {"model": "x"}, dim=2)
    digest = "12" * 20
    store.put(digest, torch.tensor([0.6, 0.8]))
    before = store.path(digest).read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between writing the temporary file and the rename

    monkeypatch.setattr(cache_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.put(digest, torch.tensor([0.8, 0.6]))
    with pytest.raises(KeyboardInterrupt):
        store.put("34" * 20, torch.tensor([1.0, 0.0]))
    monkeypatch.undo()
    assert store.path(digest).read_bytes() == before  # the old entry, whole
    assert not store.path("34" * 20).exists()  # no half-written new entry
    assert [p.name for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".tmp"] == []  # nothing left behind
    assert store.get(digest).tolist() == pytest.approx([0.6, 0.8])


def test_unwritable_cache_warns_once_and_keeps_scoring(samples, monkeypatch, caplog):
    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module, "atomic_write_bytes", full_disk)
    metric = DINOScore(RunContext(profile="tiny", **CPU))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        results = metric.score(samples)
        metric.score(samples)
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "memory only" in warnings[0]
    assert len(results) == 3 and metric.embedder.references.computed == 3  # memory still serves the second call


def test_cache_folder_that_is_a_file_is_a_one_line_error(tmp_path, monkeypatch):
    from relbench.errors import RelbenchError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("RELBENCH_EMBEDDING_CACHE", str(blocker))
    with pytest.raises(RelbenchError, match="RELBENCH_EMBEDDING_CACHE") as info:
        DINOScore(RunContext(profile="tiny", **CPU))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------
# Memory only


def test_memory_only_for_built_models_and_when_switched_off(samples, cache_dir, monkeypatch):
    from relbench.tiny import tiny_dino

    built = DINOScore(RunContext(profile="tiny", **CPU), tiny_dino(seed=0))
    built.score(samples)
    assert built.embedder.references.store is None and built.embedder.references.computed == 3
    assert not cache_dir.exists()
    monkeypatch.setenv("RELBENCH_EMBEDDING_CACHE", "off")
    assert default_cache_dir() is None
    off = DINOScore(RunContext(profile="tiny", **CPU))
    off.score(samples)
    assert off.embedder.references.store is None and not cache_dir.exists()


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("RELBENCH_EMBEDDING_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "relbench" / "embeddings"
    monkeypatch.setenv("RELBENCH_EMBEDDING_CACHE", "~/elsewhere")
    assert default_cache_dir() == Path.home() / "elsewhere"


def test_reference_embeddings_embed_each_picture_once_in_order(photos, tmp_path):
    calls = []

    def embed(images):
        calls.append(len(images))
        return torch.nn.functional.normalize(torch.tensor([[float(im.size[0]), float(im.size[1])] for im in images]), dim=-1)

    cache = ReferenceEmbeddings(embed, 2, {"model": "sizes"}, tmp_path)
    a, c = photos["astronaut"], photos["chelsea"]
    out = cache([a, c, a.copy(), c])  # a.copy(): another object, the same pixels
    assert calls == [2] and out.shape == (4, 2)
    assert torch.equal(out[0], out[2]) and torch.equal(out[1], out[3]) and not torch.equal(out[0], out[1])
    assert cache([]).shape == (0, 2) and calls == [2]
    assert cache([c], [image_digest(c)]).tolist() == out[1:2].tolist() and calls == [2]
    with pytest.raises(ValueError):
        cache([a], [])


def test_pixel_digests_are_remembered_per_live_image_only(photos):
    import hashlib

    def direct(image: Image.Image) -> str:
        digest = hashlib.sha1(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
        digest.update(image.tobytes())
        return digest.hexdigest()

    a = photos["astronaut"]
    assert image_digest(a) == image_digest(a.copy()) == direct(a)
    assert image_digest(a.convert("L")) != image_digest(a)
    # Short-lived images reuse ids: each still gets the digest of its own pixels.
    for value in range(40):
        image = Image.new("RGB", (8, 8), (value, 0, 0))
        assert image_digest(image) == direct(image)
        del image
    shrunk = a.copy()
    before = image_digest(shrunk)
    shrunk.thumbnail((64, 64))  # changed in place, with its size: digested again
    assert image_digest(shrunk) == direct(shrunk) != before
