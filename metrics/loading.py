"""Loading the pretrained models that metrics score with, and batching their inputs.

Every metric model (CLIP, DINO, the identity detector, pose backends, the local relation judge)
is named by a ``ModelRef`` (``--model KEY=ID_OR_PATH[@REVISION]``) and loaded through these
helpers, so that a wrong path, a model of the wrong class or a missing download gives the same
one-line ``RelbenchError`` everywhere, and the commit actually loaded is recorded the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from relbench.errors import RelbenchError
from relbench.profiles import ModelRef, resolved_revision


def model_source(ref: ModelRef) -> str:
    """The string to give ``from_pretrained``: an existing local folder, or a hub id.

    A reference that is written like a path (absolute, ``./``, ``~``, or more than one ``/``) but
    does not exist is refused here: transformers would otherwise answer with a confusing
    "Repo id must be in the form ..." message.
    """
    path = Path(ref.id).expanduser()
    if not path.exists():
        from relbench.models_manifest import require_cached_ref

        # Offline, a default hub model missing from the HF cache: which files, and the download command.
        require_cached_ref(ref.key, ref.id, ref.revision)
    if path.exists():
        if not path.is_dir():
            raise RelbenchError(f"--model {ref.key}={ref.id}: expected a folder saved with save_pretrained, got a file")
        return str(path)
    if ref.id.startswith(("/", "./", "../", "~")) or "\\" in ref.id or ref.id.count("/") > 1:
        raise RelbenchError(f"--model {ref.key}={ref.id}: no such folder")
    return ref.id


def load_error(ref: ModelRef, what: str, exc: BaseException) -> RelbenchError:
    from relbench.errors import exception_line
    from relbench.models_manifest import fix_hint

    revision = f" (revision {ref.revision})" if ref.revision else ""
    return RelbenchError(f"{ref.key} model {ref.id!r}{revision}: cannot load {what}: {exception_line(exc)}; {fix_hint(ref.key, ref.id)}")


def load_pretrained(model_cls: Any, ref: ModelRef, source: str, **kwargs: Any) -> Any:
    """``model_cls.from_pretrained`` that refuses checkpoints it would silently half-initialise.

    transformers loads e.g. a ViT folder into ``CLIPModel`` with a warning and random weights
    (measured with transformers 5.24); every missing or mismatched weight is an error here.
    """
    try:
        model, info = model_cls.from_pretrained(source, revision=ref.revision, output_loading_info=True, **kwargs)
    except Exception as exc:  # any failure to read a user-named model is a user-facing error
        raise load_error(ref, model_cls.__name__, exc) from exc
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        bad = missing or mismatched
        kind = "missing" if missing else "of the wrong shape"
        raise RelbenchError(
            f"{ref.key} model {ref.id!r}: {len(bad)} weights {kind} for {model_cls.__name__} (e.g. {bad[0]}); "
            f"is it a {model_cls.__name__} checkpoint? Pass --model {ref.key}=ID_OR_PATH of one"
        )
    return model.eval()


def load_component(cls: Any, ref: ModelRef, source: str) -> Any:
    """A tokenizer or image processor, with the same one-line error as the model."""
    try:
        return cls.from_pretrained(source, revision=ref.revision)
    except Exception as exc:
        raise load_error(ref, cls.__name__, exc) from exc


def resolve_revision(model: Any, source: str | None, requested: str | None) -> str | None:
    """The commit actually loaded: the config's ``_commit_hash`` (transformers 4.x), else the
    snapshot folder it came from (local snapshot path or the HF cache entry), else the request."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return str(commit)
    if source:
        if Path(source).exists():
            return resolved_revision(source) or requested
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json", revision=requested)
        except Exception:  # an unusual id or cache layout: fall back to what was asked
            cached = None
        if isinstance(cached, str):
            return resolved_revision(Path(cached).parent) or requested
    return requested


def built_model_name(model: Any) -> str:
    """What to record for a model passed in already built."""
    return str(getattr(model.config, "_name_or_path", "") or f"in-memory {type(model).__name__}")


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items (the batches a model is run on)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
