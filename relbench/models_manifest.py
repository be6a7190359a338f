"""The files the full profile reads from the Hugging Face hub, and whether the HF cache holds them.

One truth, ``relbench/manifests/models.json``: for each model key (``relbench.profiles.FULL_MODELS``)
its hub repo and revision, the repo's files with their sizes, and the files its loader reads
(``reads``: templates filled from the method's settings, ``{variant}`` -> ``.fp16`` or nothing).
``relbench models list/download/check``, evaluate's cache check (before any model loads), the
loaders' one-line "not in the cache" errors and the test suite's rehearsal cache all read it.

Torch-free: ``relbench models list`` and the checks import only ``huggingface_hub``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from relbench.errors import RelbenchError, exception_line
from relbench.profiles import resolved_revision

MANIFEST = Path(__file__).parent / "manifests" / "models.json"
# Another manifest (a test that breaks a file name, a site that pins other files).
MANIFEST_ENV = "RELBENCH_MODELS_MANIFEST"
BYTES_PER_PARAM = {"float16": 2, "bfloat16": 2, "float32": 4}
GIB = 1024**3


@dataclass(frozen=True)
class ModelEntry:
    """One model key of the manifest."""

    key: str
    repo: str
    revision: str
    commit: str | None  # the commit the listing was taken from, when one was seen
    default: bool  # the key's FULL_MODELS default (False: only with --model KEY=<repo>)
    dtype: str  # default dtype on GPU
    params: int  # parameters the loader keeps
    activation_gib: float  # allowance for activations at the default resolution and batch
    settings: Mapping[str, str]  # the template values on GPU by default (the methods' settings)
    choices: Mapping[str, tuple[str, ...]]  # values a template field takes in some command
    reads: tuple[str, ...]  # file templates
    files: Mapping[str, int]  # repo path -> size in bytes (approximate where the manifest says so)
    note: str = ""

    def files_read(self, values: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """The repo paths read with these settings (defaults for the fields not given)."""
        merged = {**self.settings, **{k: str(v) for k, v in (values or {}).items() if k in self.settings and v is not None}}
        filled = {k: (f".{v}" if v else "") if k == "variant" else v for k, v in merged.items()}
        return tuple(template.format(**filled) for template in self.reads)

    def size(self, files: Iterable[str]) -> int:
        return sum(self.files.get(f, 0) for f in files)

    def gpu_memory_gib(self) -> float:
        return self.params * BYTES_PER_PARAM.get(self.dtype, 4) / GIB + self.activation_gib


@dataclass(frozen=True)
class Need:
    """Files of one repo that a command reads, and who reads them (``method:sdxl``, ``metric:clip_t``, ...)."""

    entry: ModelEntry
    revision: str
    files: tuple[str, ...]
    users: tuple[str, ...]
    variants: tuple[str, ...] = ()  # the weight variants read ("" = full precision), for the fix command

    @property
    def key(self) -> str:
        return self.entry.key

    @property
    def size(self) -> int:
        return self.entry.size(self.files)


@dataclass(frozen=True)
class Manifest:
    path: Path
    models: Mapping[str, ModelEntry]
    methods: Mapping[str, tuple[str, ...]]  # method -> model keys
    metrics: Mapping[str, tuple[str, ...]]  # metric -> model keys
    trainers: Mapping[str, Mapping[str, Mapping[str, str]]]  # trainer -> key -> template values

    def entry(self, key: str) -> ModelEntry:
        if key not in self.models:
            raise RelbenchError(f"model key {key!r}: not in {self.path.name}; known keys: {', '.join(self.models)}")
        return self.models[key]

    def entry_for(self, key: str, repo: str) -> ModelEntry | None:
        """The entry of ``key`` when it names ``repo`` (an override with another id or a folder: None)."""
        entry = self.models.get(key)
        return entry if entry is not None and entry.repo == repo else None


def _load(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RelbenchError(f"{path}: cannot read the models manifest ({type(exc).__name__}: {exc})") from exc
    try:
        models = {
            key: ModelEntry(
                key=key, repo=m["repo"], revision=m["revision"], commit=m.get("commit"), default=bool(m["default"]),
                dtype=m["dtype"], params=int(m["params"]), activation_gib=float(m["activation_gib"]),
                settings=dict(m.get("settings", {})), choices={k: tuple(v) for k, v in m.get("choices", {}).items()},
                reads=tuple(m["reads"]), files={str(k): int(v) for k, v in m["files"].items()}, note=m.get("note", ""),
            )
            for key, m in raw["models"].items()
        }
        methods = {name: tuple(keys) for name, keys in raw["methods"].items()}
        metrics = {name: tuple(keys) for name, keys in raw["metrics"].items()}
        trainers = {name: {k: dict(v) for k, v in keys.items()} for name, keys in raw["trainers"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RelbenchError(f"{path}: not a models manifest ({type(exc).__name__}: {exc})") from exc
    return Manifest(path, models, methods, metrics, trainers)


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int) -> Manifest:
    return _load(Path(path))


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """The manifest (``$RELBENCH_MODELS_MANIFEST`` or the packaged one), re-read when it changes."""
    resolved = Path(path or os.environ.get(MANIFEST_ENV) or MANIFEST)
    try:
        mtime = resolved.stat().st_mtime_ns
    except OSError as exc:
        raise RelbenchError(f"{resolved}: no models manifest there ({exc.strerror})") from exc
    return _load_cached(str(resolved), mtime)


# --------------------------------------------------------------------------------------------
# What a command needs


@dataclass(frozen=True)
class Request:
    """One model that one user reads: the key, the repo and revision it resolves to, template values."""

    user: str
    key: str
    revision: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)


def resolve(manifest: Manifest, requests: Iterable[Request]) -> list[Need]:
    """The files of each (key, revision), merged over the requests, in the manifest's key order."""
    merged: dict[tuple[str, str], tuple[list[str], list[str], list[str]]] = {}
    for request in requests:
        entry = manifest.entry(request.key)
        revision = request.revision or entry.revision
        files, users, variants = merged.setdefault((request.key, revision), ([], [], []))
        for path in entry.files_read(request.values):
            if path not in files:
                files.append(path)
        if request.user not in users:
            users.append(request.user)
        if "variant" in entry.settings:
            variant = request.values.get("variant")
            variant = entry.settings["variant"] if variant is None else str(variant)
            variants += [] if variant in variants else [variant]
    order = list(manifest.models)
    return [
        Need(manifest.models[key], revision, tuple(files), tuple(users), tuple(variants))
        for (key, revision), (files, users, variants) in sorted(merged.items(), key=lambda item: order.index(item[0][0]))
    ]


def command_requests(manifest: Manifest, *, methods: Sequence[str] = (), metrics: Sequence[str] = (),
                     trainers: Sequence[str] = (), keys: Sequence[str] = (), variant: str | None = None) -> list[Request]:
    """What ``relbench models list/download/check`` select: methods' and metrics' models with
    their GPU defaults, trainers' models, or keys; ``variant`` (``none`` for the full-precision
    files) replaces the weight variant of every key that has one."""
    from relbench.methods import METHODS
    from relbench.metrics import METRICS

    def names(values: Sequence[str], table: Mapping[str, Any], registry: Any) -> list[str]:
        if list(values) in (["all"], ["*"]):
            return list(table)
        for value in values:
            registry.entry(value)  # unknown names: suggestions
            if value not in table:
                raise RelbenchError(f"{value!r}: not in {manifest.path.name}; it names no pretrained models to fetch")
        return list(values)

    override = {} if variant is None else {"variant": "" if variant in ("none", "") else variant}
    requests: list[Request] = []
    for name in names(methods, manifest.methods, METHODS):
        requests += [Request(f"method:{name}", key, values=override) for key in manifest.methods[name]]
    for name in [] if list(metrics) == ["none"] else names(metrics, manifest.metrics, METRICS):
        requests += [Request(f"metric:{name}", key) for key in manifest.metrics[name]]
    for name in trainers:
        if name not in manifest.trainers:
            raise RelbenchError(f"--train {name}: no such trainer in {manifest.path.name}; trainers: {', '.join(manifest.trainers)}")
        requests += [Request(f"train:{name}", key, values={**values, **override}) for key, values in manifest.trainers[name].items()]
    for key in keys:
        requests.append(Request(f"key:{key}", manifest.entry(key).key, values=override))
    return requests


# --------------------------------------------------------------------------------------------
# The HF cache


def hub_offline() -> bool:
    """What the loaders will do: HF_HUB_OFFLINE as huggingface_hub read it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def missing_files(needs: Iterable[Need], cache: str | os.PathLike[str] | None = None) -> list[tuple[Need, list[str]]]:
    """Each need with the files the HF cache lacks for its revision (a branch name resolves through
    the cache's ``refs/``; a commit hash is looked up directly)."""
    from huggingface_hub import try_to_load_from_cache

    out = []
    for need in needs:
        lacking = [
            path for path in need.files
            if not isinstance(try_to_load_from_cache(need.entry.repo, path, cache_dir=cache, revision=need.revision), str)
        ]
        if lacking:
            out.append((need, lacking))
    return out


def download_command(needs: Iterable[Need]) -> str:
    """The ``relbench models download`` command(s) that fetch these needs' files: one per weight
    variant in use, ``--variant`` only where it is not every key's GPU default."""
    needs = list(needs)
    groups: dict[str, list[Need]] = {}  # variant in use -> needs
    plain: list[Need] = []  # keys without a variant join the first command
    for need in needs:
        for variant in need.variants:
            groups.setdefault(variant, []).append(need)
        if not need.variants:
            plain.append(need)
    commands = []
    for i, (variant, members) in enumerate(groups.items() or [("", [])]):
        members = [n for n in needs if n in members or n in plain] if i == 0 else members
        keys = list(dict.fromkeys(n.key for n in members))
        default = all(n.entry.settings.get("variant", variant) == variant for n in members)
        option = "" if default else f" --variant {variant or 'none'}"
        commands.append("relbench models download " + " ".join(f"--key {k}" for k in keys) + option)
    return " and ".join(f"`{c}`" for c in commands)


def missing_message(missing: Sequence[tuple[Need, list[str]]], cache: str | os.PathLike[str] | None = None) -> str:
    """One line: every missing file by key and repo, then the command that fetches them."""
    where = cache or cache_dir()
    parts = [
        f"{need.key} ({need.entry.repo}@{need.revision}): "
        + (f"all {len(files)} files" if len(files) == len(need.files) and len(files) > 1 else ", ".join(files))
        for need, files in missing
    ]
    count = sum(len(files) for _, files in missing)
    # The command first: a long list may be clipped at the end of the line.
    return (f"{count} model file{'s' if count != 1 else ''} not in the HF cache {where}; fetch them where there is network "
            f"with {download_command(n for n, _ in missing)} (same HF_HUB_CACHE): " + "; ".join(parts))


def require_cached(needs: Sequence[Need], cache: str | os.PathLike[str] | None = None) -> None:
    """Raise the one-line missing-files error when the HF cache lacks any file of ``needs``."""
    missing = missing_files(needs, cache)
    if missing:
        raise RelbenchError(missing_message(missing, cache))


def require_cached_ref(key: str, ref_id: str, revision: str | None, values: Mapping[str, Any] | None = None,
                       user: str | None = None) -> None:
    """A loader's check before ``from_pretrained`` / ``hf_hub_download``: offline, a hub id that the
    manifest knows for ``key`` must have every file its loader reads in the cache (one-line error
    naming them and the download command). Online, or for a folder or another id, nothing is
    checked: the loader downloads, or reads the folder."""
    if not hub_offline():
        return
    manifest = load_manifest()
    if manifest.entry_for(key, ref_id) is None:
        return
    require_cached(resolve(manifest, [Request(user or f"key:{key}", key, revision, values or {})]))


def fix_hint(key: str, ref_id: str) -> str:
    """How to get a model that did not load: the download command for a repo the manifest knows,
    else a local folder."""
    try:
        known = load_manifest().entry_for(key, ref_id) is not None
    except RelbenchError:
        known = False
    if known:
        return f"fetch it with `relbench models download --key {key}` (offline: HF_HUB_CACHE must hold it) or pass --model {key}=/local/path"
    return f"download it first or pass --model {key}=/local/path"


def plan_needs(manifest: Manifest, model_ref: Any, method_models: Iterable[tuple[str, Sequence[str], Any]],
               metric_names: Iterable[str], overrides: Mapping[str, str]) -> list[Need]:
    """What an evaluation reads from the hub: each method's keys (template values from its settings
    object), each metric's keys, and any ``--model KEY=<manifest repo>`` (e.g. dense_encoder);
    keys that resolve to a folder or another repo are left to their loader."""
    requests: list[Request] = []

    def add(user: str, key: str, settings: Any = None) -> None:
        ref = model_ref(key)
        if manifest.entry_for(key, ref.id) is None:
            return
        entry = manifest.models[key]
        values = {name: getattr(settings, name) for name in entry.settings if hasattr(settings, name)} if settings is not None else {}
        requests.append(Request(user, key, ref.revision, values))

    for name, keys, settings in method_models:
        for key in manifest.methods.get(name, keys):
            add(f"method:{name}", key, settings)
    for name in metric_names:
        for key in manifest.metrics.get(name, ()):
            add(f"metric:{name}", key)
    for key in overrides:
        if key in manifest.models:
            add(f"model:{key}", key)
    return resolve(manifest, requests)


def check_model_cache(context: Any, methods: Sequence[tuple[str, Sequence[str], Any]], metrics: Sequence[str]) -> None:
    """Evaluate's check before any model loads (full profile): offline, a missing file is an error
    listing every one and the download command; online, a warning that the loaders download them."""
    import warnings

    if context.is_tiny:
        return
    needs = plan_needs(load_manifest(), context.model, methods, metrics, context.model_overrides)
    missing = missing_files(needs)
    if not missing:
        return
    if hub_offline():
        raise RelbenchError(missing_message(missing))
    count = sum(len(files) for _, files in missing)
    warnings.warn(f"{count} model files are not in the HF cache {cache_dir()} yet: the loaders download them now "
                  f"(on a node without network: {download_command(n for n, _ in missing)} first, then HF_HUB_OFFLINE=1)")


def cached_commit(need: Need, cache: str | os.PathLike[str] | None = None) -> str | None:
    """The commit of the HF-cache snapshot that ``need``'s files are read from (None: not cached)."""
    from huggingface_hub import try_to_load_from_cache

    for path in need.files:
        found = try_to_load_from_cache(need.entry.repo, path, cache_dir=cache, revision=need.revision)
        if isinstance(found, str):
            return resolved_revision(found)
    return None


def plan_hub_models(plan: Any) -> dict[str, dict[str, Any]]:
    """run.json provenance of an evaluation plan: each hub model it reads -> repo, revision, the
    commit the HF cache resolves it to (None where it is not cached yet), who reads it."""
    context = plan.context
    if context.is_tiny:
        return {}
    from relbench.methods import METHODS

    methods = [(m.name, METHODS.get(m.name).model_keys, m.settings) for m in plan.methods] if plan.stage != "score" else []
    needs = plan_needs(load_manifest(), context.model, methods, plan.metrics if plan.stage != "generate" else [],
                       context.model_overrides)
    return {
        need.key: {"repo": need.entry.repo, "revision": need.revision, "commit": cached_commit(need), "used_by": list(need.users)}
        for need in needs
    }


def human_size(size: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# --------------------------------------------------------------------------------------------
# relbench models list / download


def list_lines(needs: Sequence[Need]) -> list[str]:
    """The table of ``relbench models list``: a line per model, its files indented, then totals."""
    lines = [f"{'key':<14} {'repo':<44} {'revision':<9} {'files':>5} {'download':>9}  GPU memory (estimate)"]
    for need in needs:
        e = need.entry
        lines.append(
            f"{e.key:<14} {e.repo:<44} {need.revision:<9} {len(need.files):>5} {human_size(need.size):>9}  "
            f"~{e.gpu_memory_gib():.1f} GiB ({e.params / 1e9:.2f}B params, {e.dtype})  used by {', '.join(need.users)}"
        )
        lines += [f"    {path}  {human_size(e.files.get(path, 0))}" for path in need.files]
    total = sum(need.size for need in needs)
    lines.append(f"total download {human_size(total)} ({sum(len(n.files) for n in needs)} files, sizes approximate); "
                 f"GPU memory: {peak_line(needs)}")
    return lines


def peak_line(needs: Sequence[Need]) -> str:
    """The peak estimate: evaluate loads one method at a time, the metrics' models stay loaded."""
    by_key = {need.key: need.entry.gpu_memory_gib() for need in needs}
    methods: dict[str, set[str]] = {}
    metric_keys: set[str] = set()
    for need in needs:
        for user in need.users:
            kind, _, name = user.partition(":")
            if kind == "metric":
                metric_keys.add(need.key)
            else:
                methods.setdefault(user, set()).add(need.key)
    metric_gib = sum(by_key[k] for k in metric_keys)
    if not methods:
        return f"~{metric_gib:.1f} GiB (metrics)"
    worst, keys = max(methods.items(), key=lambda item: sum(by_key[k] for k in item[1]))
    method_gib = sum(by_key[k] for k in keys)
    if not metric_keys:
        return f"~{method_gib:.1f} GiB at the peak ({worst})"
    return f"~{method_gib + metric_gib:.1f} GiB at the peak ({worst} {method_gib:.1f} GiB + metrics {metric_gib:.1f} GiB)"


def download(needs: Sequence[Need], echo: Any = print) -> list[str]:
    """Fetch exactly the needed files into the HF cache (``snapshot_download`` with allow_patterns:
    resumable, token from HF_TOKEN or ``hf auth login``); returns the snapshot folders."""
    if hub_offline():
        raise RelbenchError("HF_HUB_OFFLINE is set: `relbench models download` needs network; unset it on a machine that has it")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    folders = []
    for need in needs:
        echo(f"{need.key}: {need.entry.repo}@{need.revision}: {len(need.files)} files, {human_size(need.size)}")
        try:
            folder = snapshot_download(need.entry.repo, revision=need.revision, allow_patterns=list(need.files))
        except (HfHubHTTPError, OSError, ValueError) as exc:
            text = exception_line(exc, 300)
            gated = " (a gated repo? accept its terms on huggingface.co, then set HF_TOKEN)" if " 401" in text or " 403" in text else ""
            raise RelbenchError(f"{need.key}: cannot download from {need.entry.repo}@{need.revision}: {text}{gated}") from exc
        folders.append(folder)
    return folders
