"""Reference-image embeddings cached in memory and on disk, so that a run embeds each reference once
and later runs (new processes) embed none again.

Every reference image of a subject is compared with every generated image of every case, method
and seed that uses it; its embedding depends only on its pixels and on the embedder. The cache key
is therefore the pair

* **settings hash**: SHA-256 of the embedder's identity (model id, resolved revision, model class,
  preprocessing, pooling, dtype, plus what fixes the weights, see below) and ``SCHEMA``;
* **pixel digest**: ``image_digest`` (SHA-1 of mode, size and decoded pixels), so the same picture
  from any file or format hits.

Layout: ``<folder>/<settings hash[:32]>/settings.json`` (the identity, for people) and
``<folder>/<settings hash[:32]>/<digest[:2]>/<digest>.safetensors``, one float32 vector per file,
whose metadata repeats the full settings hash, the digest and a SHA-256 of the vector bytes. A
file that cannot be read, belongs to another key, has the wrong size or fails its checksum is
recomputed with a warning and replaced. Writes are atomic (``relbench.atomic``: a temporary file
in the same folder, then ``os.replace``): a killed process leaves no half-written entry, and concurrent writers of one key
write the same vector.

What fixes the weights, by where the model came from:

* hub id whose snapshot commit was resolved: the 40-hex commit;
* local folder that is not a hub snapshot: name, size and modification time of each file in it,
  so that overwriting the weights misses the cache;
* tiny profile (random weights built in memory): the seed, a hash of the config and a hash of the
  weights themselves (cheap at this size), so that a change in ``relbench.tiny`` cannot serve
  stale vectors;
* a model passed in already built, or a hub id whose commit is unknown (e.g. ``@main`` without a
  cached snapshot): no stable identity, so memory only.

The device is not part of the key: CPU and GPU embeddings of one image differ only by float rounding.

Folder: ``$RELBENCH_EMBEDDING_CACHE`` if set (``off`` keeps embeddings in memory only), else
``$XDG_CACHE_HOME/relbench/embeddings`` (``~/.cache/relbench/embeddings``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.atomic import atomic_write_bytes
from relbench.errors import RelbenchError

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

# Bump when what an embedder computes for the same settings changes (forward, pooling code, normalisation).
SCHEMA = 1
ENV_VAR = "RELBENCH_EMBEDDING_CACHE"
_OFF = ("", "0", "off", "none", "false", "no")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
TENSOR_NAME = "embedding"


def default_cache_dir() -> Path | None:
    """Where reference embeddings go; None when the cache is switched off."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relbench" / "embeddings"


def settings_hash(identity: Mapping[str, Any]) -> str:
    canonical = json.dumps({"schema": SCHEMA, **identity}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Pixel digests


# Digests of live image objects: a reference image is digested by clip_i, dino and the identity
# analyser for every case that uses it (a few ms each at 1024 px). Images are treated as immutable
# while alive: an image changed in place after its first digest keeps its old one.
_DIGESTS: dict[int, tuple["weakref.ref[Image.Image]", str, str, tuple[int, int]]] = {}


def image_digest(image: "Image.Image") -> str:
    """sha1 of the decoded pixels with mode and size: equal for the same picture from any file."""
    key = id(image)
    known = _DIGESTS.get(key)
    if known is not None and known[0]() is image and known[2] == image.mode and known[3] == image.size:
        return known[1]
    digest = hashlib.sha1(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    value = digest.hexdigest()
    try:
        # The entry goes when the image does (before its id can be reused).
        ref = weakref.ref(image, lambda _, key=key: _DIGESTS.pop(key, None))
    except TypeError:  # an object without weak references: not memoised
        return value
    _DIGESTS[key] = (ref, value, image.mode, image.size)
    return value


# --------------------------------------------------------------------------------------------
# What fixes an embedder's weights


def weights_sha256(model: "torch.nn.Module") -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes); for small models."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def folder_files(folder: str | os.PathLike[str]) -> list[list[Any]]:
    """Name, size and mtime (ns) of each file of a model folder, sorted."""
    out = []
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.name.startswith("."):
            stat = path.stat()
            out.append([path.name, stat.st_size, stat.st_mtime_ns])
    return out


def weights_identity(
    model: "torch.nn.Module", *, source: str | None, revision: str | None, tiny_seed: int | None,
) -> dict[str, Any] | None:
    """What pins the loaded weights (see the module docstring), or None for memory only.

    ``source``: the folder or hub id given to ``from_pretrained`` (None: built in memory);
    ``revision``: the resolved revision; ``tiny_seed``: the seed of a tiny-profile model. Call it
    before the model is moved to another device or dtype.
    """
    if tiny_seed is not None:
        config = hashlib.sha256(model.config.to_json_string(use_diff=False).encode()).hexdigest()
        return {"tiny_seed": tiny_seed, "config_sha256": config, "weights_sha256": weights_sha256(model)}
    if source is None:
        return None
    if revision and _COMMIT.match(revision):
        return {"commit": revision}
    if Path(source).is_dir():
        return {"folder": str(Path(source).resolve()), "files": folder_files(source)}
    return None


# --------------------------------------------------------------------------------------------
# Disk store


class EmbeddingStore:
    """One embedder's vectors on disk, one safetensors file per image digest."""

    def __init__(self, folder: str | os.PathLike[str], identity: Mapping[str, Any], dim: int):
        root = Path(folder).expanduser()
        if root.exists() and not root.is_dir():
            raise RelbenchError(f"embedding cache {root}: exists and is not a folder; set {ENV_VAR} to a folder, or to 'off'")
        self.identity = dict(identity)
        self.hash = settings_hash(self.identity)
        self.folder = root / self.hash[:32]
        self.dim = dim
        self.writable = True

    def path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def get(self, digest: str) -> "torch.Tensor | None":
        """The stored vector, or None (missing; or unreadable / wrong, with a warning)."""
        import torch
        from safetensors import safe_open

        path = self.path(digest)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                vector = handle.get_tensor(TENSOR_NAME)
            problem = None
            if meta.get("settings") != self.hash or meta.get("digest") != digest:
                problem = "written for another key"
            elif vector.dtype != torch.float32 or tuple(vector.shape) != (self.dim,):
                problem = f"holds a {vector.dtype} {tuple(vector.shape)} tensor, expected float32 ({self.dim},)"
            elif meta.get("sha256") != _vector_sha256(vector):
                problem = "checksum mismatch"
        except Exception as exc:  # any damage (truncated, not safetensors, missing tensor) is a miss
            problem = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'unreadable'}"
        if problem is not None:
            log.warning("embedding cache: recomputing %s (%s)", path, problem)
            return None
        return vector

    def put(self, digest: str, vector: "torch.Tensor") -> None:
        """Store atomically; on a write error (read-only, disk full) warn once and stop writing."""
        import torch
        from safetensors.torch import save

        if not self.writable:
            return
        vector = vector.detach().to("cpu", dtype=torch.float32).contiguous().clone()
        meta = {"schema": str(SCHEMA), "settings": self.hash, "digest": digest, "sha256": _vector_sha256(vector)}
        try:
            self._write_settings()
            atomic_write_bytes(self.path(digest), save({TENSOR_NAME: vector}, metadata=meta))
        except OSError as exc:
            self.writable = False
            log.warning("embedding cache: cannot write under %s (%s); embeddings are kept in memory only", self.folder, exc)

    def _write_settings(self) -> None:
        path = self.folder / "settings.json"
        if not path.is_file():
            text = json.dumps({"schema": SCHEMA, "settings_hash": self.hash, **self.identity}, indent=1, sort_keys=True, default=str)
            atomic_write_bytes(path, text.encode("utf-8"))


def _vector_sha256(vector: "torch.Tensor") -> str:
    return hashlib.sha256(vector.contiguous().numpy().tobytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Memory + disk in front of an embedder


class ReferenceEmbeddings:
    """Embeddings of reference images: memory, then disk, then the embedder (in batches).

    ``embed`` maps images to (N, dim) L2-normalised float32 CPU tensors. ``identity`` is the
    embedder's settings (None: memory only). ``computed`` counts images this object sent to the
    embedder; ``from_disk`` those read back from files.
    """

    def __init__(
        self,
        embed: Callable[[Sequence["Image.Image"]], "torch.Tensor"],
        dim: int,
        identity: Mapping[str, Any] | None,
        folder: str | os.PathLike[str] | None | bool = True,
    ):
        """``folder``: True for ``default_cache_dir()``, a path, or None / False for memory only."""
        self.embed = embed
        self.dim = dim
        if folder is True:
            folder = default_cache_dir()
        self.store = EmbeddingStore(folder, identity, dim) if folder and identity is not None else None
        self._memory: dict[str, "torch.Tensor"] = {}
        self.computed = 0
        self.from_disk = 0

    def __call__(self, images: Sequence["Image.Image"], digests: Sequence[str] | None = None) -> "torch.Tensor":
        """(N, dim) embeddings of ``images`` (``digests``: their ``image_digest``, if known)."""
        import torch

        if digests is None:
            digests = [image_digest(image) for image in images]
        if len(digests) != len(images):
            raise ValueError(f"{len(images)} images but {len(digests)} digests")
        pending: dict[str, "Image.Image"] = {}
        for image, digest in zip(images, digests):
            if digest in self._memory or digest in pending:
                continue
            stored = self.store.get(digest) if self.store is not None else None
            if stored is not None:
                self._memory[digest] = stored
                self.from_disk += 1
            else:
                pending[digest] = image
        if pending:
            vectors = self.embed(list(pending.values()))
            self.computed += len(pending)
            for digest, vector in zip(pending, vectors):
                vector = vector.clone()  # not a view of the batch: each entry owns its storage
                self._memory[digest] = vector
                if self.store is not None:
                    self.store.put(digest, vector)
        if not digests:
            return torch.empty(0, self.dim)
        return torch.stack([self._memory[digest] for digest in digests])
