"""One generic registry with lazy entries.

Entries are registered as ``"module:attr"`` strings together with the metadata that listings need,
so that ``relbench --help`` and ``relbench methods list`` import no torch. The target is imported
on first use. Unknown names answer with close matches and the full list, as in
lm-evaluation-harness's registry.

Methods and metrics register their torch-free info object instead (``add("module:INFO")``, see
``relbench.plugins``): name, target and metadata all come from it, read on the registry's first
use; infos named in the registry's environment variable (``$RELBENCH_METHODS``, ...) join them.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from relbench.errors import RelbenchError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:attr"
    summary: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    info: Any = None  # the plugin's info object (relbench.plugins) when registered with add()


class Registry(Generic[T]):
    """Name -> lazily imported object (a class, usually)."""

    def __init__(self, kind: str, env: str | None = None):
        self.kind = kind  # "method", "metric", ... used in messages
        self.env = env  # variable naming more info objects, comma-separated "module:ATTR"
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, T] = {}
        self._pending: list[str] = []  # add()ed info refs not read yet
        self._env_value = ""  # the variable's value whose infos are registered
        self._env_names: list[str] = []  # ... and their names (replaced when the value changes)

    def add(self, info_ref: str) -> None:
        """Register a plugin by its torch-free info object, ``"module:ATTR"`` (relbench.plugins);
        the module is imported on the registry's first use, the plugin's class on ``get``."""
        if ":" not in info_ref:
            raise ValueError(f"info must look like 'module:ATTR', got {info_ref!r}")
        self._pending.append(info_ref)

    def _resolve(self) -> None:
        while self._pending:
            self._register_info(self._pending[0])
            self._pending.pop(0)
        value = os.environ.get(self.env, "") if self.env else ""
        if value != self._env_value:
            # The variable changed (a test, a launcher): its plugins are exactly those it names now.
            for name in self._env_names:
                self._entries.pop(name, None)
                self._loaded.pop(name, None)
            self._env_names = []
            for ref in (part.strip() for part in value.split(",") if part.strip()):
                self._env_names.append(self._register_info(ref, where=f"${self.env}: "))
            self._env_value = value

    def _register_info(self, ref: str, where: str = "") -> str:
        module_name, _, attr = ref.partition(":")
        if not module_name or not attr:
            raise RelbenchError(f"{where}{self.kind} info must look like 'module:ATTR', got {ref!r}")
        try:
            info = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise RelbenchError(f"{where}cannot read {self.kind} info {ref!r}: {exc}") from exc
        if not all(hasattr(info, a) for a in ("name", "target", "summary", "meta")):
            raise RelbenchError(f"{where}{ref} is not a {self.kind} info (relbench.plugins), got {type(info).__name__}")
        if info.name in self._entries:
            raise RelbenchError(f"{where}{self.kind} {info.name!r} is already registered ({self._entries[info.name].target})")
        self._entries[info.name] = Entry(info.name, info.target, info.summary, info.meta(), info)
        return str(info.name)

    def register(self, name: str, target: str | T, summary: str = "", **meta: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name].target})")
        if isinstance(target, str):
            if ":" not in target:
                raise ValueError(f"lazy target must look like 'module:attr', got {target!r}")
            entry = Entry(name, target, summary, dict(meta))
        else:
            entry = Entry(name, f"{target.__module__}:{getattr(target, '__qualname__', name)}", summary, dict(meta))
            self._loaded[name] = target
        self._entries[name] = entry

    def names(self) -> list[str]:
        self._resolve()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self._resolve()
        return name in self._entries

    def entry(self, name: str) -> Entry:
        self._resolve()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def get(self, name: str) -> T:
        entry = self.entry(name)
        if name not in self._loaded:
            module_name, _, attr = entry.target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise RelbenchError(
                    f"{self.kind} {name!r} needs a package that is not installed ({exc}); "
                    f"see the README for its optional extras"
                ) from exc
            obj: Any = module
            for part in attr.split("."):
                obj = getattr(obj, part)
            if entry.info is not None and getattr(obj, "info", None) is not entry.info:
                # One source: the class's attributes must come from the info the listing showed.
                raise ValueError(f"{entry.target} must set `info` to the registered {self.kind} info of {name!r}")
            self._loaded[name] = obj
        return self._loaded[name]

    def unknown_message(self, name: str) -> str:
        return unknown_name_message(self.kind, name, self.names())


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """`` Did you mean 'sdxl'?`` naming the known names close to ``name``; empty when none is."""
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_name_message(kind: str, name: str, names: list[str]) -> str:
    """``unknown <kind> 'sdxxl'. Did you mean 'sdxl'? Available: ...``: for any list of known names."""
    return f"unknown {kind} {name!r}.{did_you_mean(name, names)} Available: {', '.join(names) or '(none)'}"
